//! The `dependsOn` graph, over declaration indices: `deps[i]` lists what service `i` needs.

/// Every index once, each after all of its dependencies; among services that are ready at
/// the same time, the one declared first goes first. Members of a cycle (which validation
/// refuses) are appended in declaration order rather than dropped.
pub(super) fn topo_order(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let ready =
            (0..n).find(|&i| !placed[i] && deps[i].iter().all(|&d| d == i || d >= n || placed[d]));
        match ready {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                order.extend((0..n).filter(|&i| !placed[i]));
                break;
            }
        }
    }
    order
}

/// Each dependency cycle found by a depth-first walk in declaration order, as the path that
/// closes it: `[a, b, a]`. Self-loops are ignored (they are reported on their own).
pub(super) fn cycles(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }

    fn visit(
        node: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        found: &mut Vec<Vec<usize>>,
    ) {
        marks[node] = Mark::OnPath;
        path.push(node);
        for &next in &deps[node] {
            if next == node || next >= deps.len() {
                continue;
            }
            match marks[next] {
                Mark::New => visit(next, deps, marks, path, found),
                Mark::OnPath => {
                    let start = path.iter().position(|&p| p == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next);
                    found.push(cycle);
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[node] = Mark::Done;
    }

    let mut marks = vec![Mark::New; deps.len()];
    let mut found = Vec::new();
    for start in 0..deps.len() {
        if marks[start] == Mark::New {
            visit(start, deps, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_come_first_and_ties_keep_declaration_order() {
        // 0 needs 2, 1 needs 0, 3 needs nothing.
        let deps = vec![vec![2], vec![0], vec![], vec![]];
        assert_eq!(topo_order(&deps), vec![2, 0, 1, 3]);
    }

    #[test]
    fn independent_services_keep_declaration_order() {
        assert_eq!(topo_order(&[vec![], vec![], vec![]]), vec![0, 1, 2]);
    }

    #[test]
    fn cycle_members_are_still_listed_once() {
        let deps = vec![vec![1], vec![0], vec![]];
        assert_eq!(topo_order(&deps), vec![2, 0, 1]);
    }

    #[test]
    fn cycle_is_named_from_where_it_closes() {
        let deps = vec![vec![1], vec![2], vec![0], vec![]];
        assert_eq!(cycles(&deps), vec![vec![0, 1, 2, 0]]);
    }

    #[test]
    fn acyclic_graph_and_self_loops_have_no_cycles() {
        assert!(cycles(&[vec![1, 2], vec![2], vec![], vec![3]]).is_empty());
    }
}
