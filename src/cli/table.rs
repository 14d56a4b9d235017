//! Tables for people: every column as wide as its widest cell (long names and statuses such
//! as `resolved:controller` never push the next column out of line), the last one unpadded.

use super::{Failure, outln};

enum Line {
    Cells(Vec<String>),
    /// A free line under the row before it (an error, a note), not aligned.
    Note(String),
}

pub struct Table {
    width: usize,
    lines: Vec<Line>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            width: headers.len(),
            lines: vec![Line::Cells(headers.iter().map(|h| h.to_string()).collect())],
        }
    }

    /// Adds a row; missing cells are blank, extra ones are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.width, String::new());
        self.lines.push(Line::Cells(cells));
    }

    pub fn note(&mut self, line: String) {
        self.lines.push(Line::Note(line));
    }

    /// The lines as printed.
    pub fn render(&self) -> Vec<String> {
        let mut widths = vec![0; self.width];
        for line in &self.lines {
            if let Line::Cells(cells) = line {
                for (w, cell) in widths.iter_mut().zip(cells) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        self.lines
            .iter()
            .map(|line| match line {
                Line::Note(text) => text.clone(),
                Line::Cells(cells) => {
                    let last = cells.len() - 1;
                    let mut out = String::new();
                    for (i, cell) in cells.iter().enumerate() {
                        if i == last {
                            out.push_str(cell);
                        } else {
                            let pad = widths[i] - cell.chars().count();
                            out.push_str(cell);
                            out.push_str(&" ".repeat(pad + 2));
                        }
                    }
                    out.trim_end().to_string()
                }
            })
            .collect()
    }

    pub fn print(&self) -> Result<(), Failure> {
        for line in self.render() {
            outln!("{line}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&["ID", "STATUS", "DETAIL"]);
        t.row(vec![
            "1".into(),
            "resolved:controller".into(),
            "exited".into(),
        ]);
        t.note("    could not observe: refused".into());
        t.row(vec!["12".into(), "open".into(), "paused".into()]);
        assert_eq!(
            t.render(),
            vec![
                "ID  STATUS               DETAIL",
                "1   resolved:controller  exited",
                "    could not observe: refused",
                "12  open                 paused",
            ]
        );
    }
}
