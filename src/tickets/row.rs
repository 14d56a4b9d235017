//! Rows as SQLite holds them, each declared once: the `SELECT` list and the reading of a row
//! come from the same list of fields, and a field is read by its column's name, never by its
//! position. A column added to one and not to the other cannot shift every column after it
//! (the store once kept a column list beside a positional reader for each table).
//!
//! A raw row holds SQLite's types (text, integers); turning it into the domain type, with
//! strict parsing that names the table, row and column it cannot read, stays beside each
//! table's SQL.

/// Declares a raw row type: `COLUMNS` is its `SELECT` list (each field under its own name,
/// or `expr AS field` for a field written `field = "expr"`, as for a join's `a.id`), and
/// `read` reads a row of that select by column name.
macro_rules! raw_row {
    (
        $(#[$meta:meta])*
        struct $name:ident {
            $( $field:ident : $ty:ty $(= $expr:literal)? ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        struct $name {
            $( $field: $ty ),+
        }

        impl $name {
            /// The `SELECT` list of this row.
            const COLUMNS: &'static str = $crate::tickets::row::raw_row!(@list $( $field $(= $expr)? ),+);

            /// Reads one row of a select of [`Self::COLUMNS`], by column name.
            fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok($name {
                    $( $field: r.get(stringify!($field))? ),+
                })
            }
        }
    };
    (@one $field:ident) => { stringify!($field) };
    (@one $field:ident = $expr:literal) => { concat!($expr, " AS ", stringify!($field)) };
    (@list $field:ident $(= $expr:literal)?) => {
        $crate::tickets::row::raw_row!(@one $field $(= $expr)?)
    };
    (@list $field:ident $(= $expr:literal)?, $($rest:tt)+) => {
        concat!(
            $crate::tickets::row::raw_row!(@one $field $(= $expr)?),
            ", ",
            $crate::tickets::row::raw_row!(@list $($rest)+)
        )
    };
}

pub(crate) use raw_row;

#[cfg(test)]
mod tests {
    raw_row! {
        struct Pair {
            id: i64,
            label: String = "upper(name)",
            gone: Option<String>,
        }
    }

    #[test]
    fn a_raw_row_selects_and_reads_its_fields_by_name() {
        assert_eq!(Pair::COLUMNS, "id, upper(name) AS label, gone");
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (name TEXT, gone TEXT, id INTEGER); INSERT INTO t VALUES ('a', NULL, 7);",
        )
        .unwrap();
        let pair = conn
            .query_row(&format!("SELECT {} FROM t", Pair::COLUMNS), [], Pair::read)
            .unwrap();
        assert_eq!((pair.id, pair.label.as_str(), pair.gone), (7, "A", None));
    }
}
