//! Data tests on a node's output table: `@key` uniqueness and the `@assert`
//! checks (DESIGN §1). The table is loaded into an in-memory SQLite database
//! and each check is a counting query. Messages carry counts only, never a
//! cell value: the data may be PHI and messages reach forge comments.

use std::path::Path;

use rusqlite::Connection;

use super::sqlite::{ExecError, load_file, open_memory, quote_ident};
use super::table::ReadMode;
use crate::pipeline::directive::Assert;

/// Checks the canonical CSV at `csv_path` (loaded as table `table_name`)
/// against the node's key and assertions. `Err` lists every failure.
pub fn check_table(
    csv_path: &Path,
    table_name: &str,
    key: Option<&[String]>,
    asserts: &[Assert],
) -> Result<(), Vec<String>> {
    let conn = open_memory().map_err(|e| vec![e.to_string()])?;
    let stats = load_file(&conn, table_name, csv_path, ReadMode::Exact)
        .map_err(|e| vec![format!("cannot load the table for its tests: {e}")])?;
    let checker = Checker {
        conn: &conn,
        table: quote_ident(table_name),
        columns: &stats.columns,
        rows: stats.rows,
    };
    let mut failures = Vec::new();
    if let Some(key) = key {
        checker.key(key, &mut failures);
    }
    for a in asserts {
        if let Some(msg) = checker.assertion(a) {
            failures.push(msg);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

struct Checker<'a> {
    conn: &'a Connection,
    /// The quoted table name.
    table: String,
    columns: &'a [String],
    rows: u64,
}

impl Checker<'_> {
    /// A count query; an SQL error becomes the message.
    fn count(&self, sql: &str) -> Result<u64, ExecError> {
        let n: i64 = self.conn.query_row(sql, [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The quoted column, or a failure naming the missing column. Names are
    /// matched exactly (as in the CSV header), not case-insensitively as SQL
    /// would.
    fn column(&self, col: &str) -> Result<String, String> {
        if self.columns.iter().any(|c| c == col) {
            Ok(quote_ident(col))
        } else {
            Err(format!("no column {col} in the table"))
        }
    }

    fn key(&self, key: &[String], failures: &mut Vec<String>) {
        let label = format!("@key {}", key.join(", "));
        if key.is_empty() {
            failures.push(format!("{label}: names no column"));
            return;
        }
        let mut cols = Vec::new();
        for k in key {
            match self.column(k) {
                Ok(q) => cols.push(q),
                Err(e) => failures.push(format!("{label}: {e}")),
            }
        }
        if cols.len() != key.len() {
            return;
        }
        let t = &self.table;
        let group = cols.join(", ");
        // GROUP BY puts NULLs together, so two rows with a NULL key count as
        // a duplicate as well as a NULL key.
        match self.count(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM {t} GROUP BY {group} HAVING count(*) > 1)"
        )) {
            Ok(0) => {}
            Ok(n) => failures.push(format!(
                "{label}: {n} duplicate {}",
                plural(n, "key", "keys")
            )),
            Err(e) => failures.push(format!("{label}: {e}")),
        }
        let any_null: Vec<String> = cols.iter().map(|c| format!("{c} IS NULL")).collect();
        match self.count(&format!(
            "SELECT count(*) FROM {t} WHERE {}",
            any_null.join(" OR ")
        )) {
            Ok(0) => {}
            Ok(n) => failures.push(format!(
                "{label}: {n} {} with a NULL key column",
                plural(n, "row", "rows")
            )),
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }

    /// `None` when the assertion holds, else the failure.
    fn assertion(&self, a: &Assert) -> Option<String> {
        let t = &self.table;
        let result: Result<Option<String>, String> =
            match a {
                Assert::NotNull(col) => self.column(col).and_then(|q| {
                    let n = self
                        .count(&format!("SELECT count(*) FROM {t} WHERE {q} IS NULL"))
                        .map_err(|e| e.to_string())?;
                    Ok((n > 0)
                        .then(|| format!("{n} {} NULL {col}", plural(n, "row has", "rows have"))))
                }),
                Assert::Unique(col) => self.column(col).and_then(|q| {
                    // NULLs are not values: they do not repeat one another.
                    let n = self
                        .count(&format!(
                            "SELECT count(*) FROM (SELECT 1 FROM {t} WHERE {q} IS NOT NULL \
                         GROUP BY {q} HAVING count(*) > 1)"
                        ))
                        .map_err(|e| e.to_string())?;
                    Ok((n > 0).then(|| {
                        format!(
                            "{n} {} more than once",
                            plural(n, "value occurs", "values occur")
                        )
                    }))
                }),
                Assert::Rows { op, value } => {
                    let ok = op.holds(self.rows, *value);
                    // Written without the `: ` of the others: `rows > 0 failed: 0 rows`.
                    return (!ok).then(|| {
                        format!(
                            "@assert {a} failed: {} {}",
                            self.rows,
                            plural(self.rows, "row", "rows")
                        )
                    });
                }
                Assert::Sql(query) => {
                    let q = query.trim().trim_end_matches(';').trim_end();
                    // The query on lines of its own, so that a trailing `--`
                    // comment cannot swallow the closing parenthesis.
                    self.count(&format!("SELECT count(*) FROM (\n{q}\n)"))
                        .map(|n| {
                            (n > 0).then(|| {
                                format!(
                                    "the query returned {n} failing {}",
                                    plural(n, "row", "rows")
                                )
                            })
                        })
                        .map_err(|e| e.to_string())
                }
            };
        match result {
            Ok(None) => None,
            Ok(Some(detail)) | Err(detail) => Some(format!("@assert {a}: {detail}")),
        }
    }
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::directive::CmpOp;

    fn table(csv: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sluice-checks-test-{}-{}.csv",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&p, csv).unwrap();
        p
    }

    const PATIENTS: &str = "patient_id,site,mrn\n1,a,007\n2,a,\n2,b,x\n3,,x\n3,c,y\n,c,z\n";

    fn keys(cols: &[&str]) -> Vec<String> {
        cols.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn key_failures_are_counts() {
        let p = table(PATIENTS);
        let e = check_table(&p, "Patient", Some(&keys(&["patient_id"])), &[]).unwrap_err();
        assert_eq!(
            e,
            vec![
                "@key patient_id: 2 duplicate keys",
                "@key patient_id: 1 row with a NULL key column",
            ]
        );
        check_table(&p, "Patient", Some(&keys(&["site", "mrn"])), &[]).unwrap_err();
        assert_eq!(
            check_table(&p, "Patient", Some(&keys(&["patient_id", "mrn"])), &[]).unwrap_err(),
            vec!["@key patient_id, mrn: 2 rows with a NULL key column"]
        );
        let e = check_table(&p, "Patient", Some(&keys(&["patient_id", "nope"])), &[]).unwrap_err();
        assert_eq!(
            e,
            vec!["@key patient_id, nope: no column nope in the table"]
        );
        let ok = table("id,v\n1,a\n2,a\n");
        check_table(&ok, "T", Some(&keys(&["id"])), &[]).unwrap();
        check_table(&ok, "T", Some(&keys(&["id", "v"])), &[]).unwrap();
    }

    #[test]
    fn assertions_pass_and_fail_with_counts() {
        let p = table(PATIENTS);
        let asserts = [
            Assert::NotNull("patient_id".into()),
            Assert::NotNull("mrn".into()),
            Assert::Unique("mrn".into()),
            Assert::Unique("site".into()),
            Assert::Rows {
                op: CmpOp::Gt,
                value: 0,
            },
            Assert::Rows {
                op: CmpOp::Ge,
                value: 10,
            },
            Assert::Sql("SELECT * FROM Patient WHERE patient_id > 2;".into()),
            Assert::Sql("SELECT * FROM Patient WHERE patient_id > 99 -- none".into()),
            Assert::NotNull("gone".into()),
            Assert::Sql("SELECT * FROM Nope".into()),
        ];
        let e = check_table(&p, "Patient", None, &asserts).unwrap_err();
        assert_eq!(
            e,
            vec![
                "@assert not_null(patient_id): 1 row has NULL patient_id",
                "@assert not_null(mrn): 1 row has NULL mrn",
                "@assert unique(mrn): 1 value occurs more than once",
                "@assert unique(site): 2 values occur more than once",
                "@assert rows >= 10 failed: 6 rows",
                "@assert sql: SELECT * FROM Patient WHERE patient_id > 2;: the query returned 2 failing rows",
                "@assert not_null(gone): no column gone in the table",
                "@assert sql: SELECT * FROM Nope: SQL error: no such table: Nope",
            ]
        );
        // No message holds a cell value.
        for msg in &e {
            for value in ["007", "\"x\"", " x ", " y", " z"] {
                assert!(!msg.contains(value), "{msg}");
            }
        }
        let passing = [
            Assert::NotNull("site".into()),
            Assert::Rows {
                op: CmpOp::Eq,
                value: 6,
            },
        ];
        let e = check_table(&p, "Patient", None, &passing).unwrap_err();
        assert_eq!(e, vec!["@assert not_null(site): 1 row has NULL site"]);
        let ok = table("id,v\n1,a\n2,b\n");
        check_table(
            &ok,
            "T",
            Some(&keys(&["id"])),
            &[
                Assert::NotNull("v".into()),
                Assert::Unique("v".into()),
                Assert::Rows {
                    op: CmpOp::Eq,
                    value: 2,
                },
                Assert::Sql("SELECT * FROM T WHERE id < 0".into()),
            ],
        )
        .unwrap();
    }

    #[test]
    fn rows_on_an_empty_table() {
        let p = table("id\n");
        let e = check_table(
            &p,
            "T",
            None,
            &[Assert::Rows {
                op: CmpOp::Gt,
                value: 0,
            }],
        )
        .unwrap_err();
        assert_eq!(e, vec!["@assert rows > 0 failed: 0 rows"]);
    }
}
