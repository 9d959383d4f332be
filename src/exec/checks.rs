//! Data tests on a node's output table: `@key` uniqueness and the `@assert`
//! checks (DESIGN §1). The table is loaded into an in-memory SQLite database
//! and each check is a counting query. Messages carry counts only, never a
//! cell value: the data may be PHI and messages reach forge comments.

use std::path::Path;

use rusqlite::Connection;

use super::sqlite::{
    ExecError, RELATIVE as RELATIVE_BIAS, SqlLimits, explain_stop, install_limits, load_file,
    open_memory, quote_ident,
};
use super::table::ReadMode;
use crate::pipeline::directive::Assert;

/// One failed data test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Counts only, never a cell value.
    pub message: String,
    /// The index into the assertions, or `None` for the `@key`.
    pub assert: Option<usize>,
    /// For an `@assert sql:` the query of which failed to run: the byte
    /// offset in the query where SQLite placed the error.
    pub query_offset: Option<usize>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What wraps an `@assert sql:` query to count its rows. The query stands
/// on lines of its own, so that a trailing `--` comment cannot swallow the
/// closing parenthesis.
const WRAP_START: &str = "SELECT count(*) FROM (\n";

/// An assertion's query as it runs: trimmed, without its final `;`.
fn query_text(query: &str) -> &str {
    query.trim().trim_end_matches(';').trim_end()
}

/// Checks the canonical CSV at `csv_path` (loaded as table `table_name`)
/// against the node's key and assertions. `Err` lists every failure.
pub fn check_table(
    csv_path: &Path,
    table_name: &str,
    key: Option<&[String]>,
    asserts: &[Assert],
    limits: &SqlLimits,
    own: Option<&str>,
) -> Result<(), Vec<Failure>> {
    let whole = |message: String| Failure {
        message,
        assert: None,
        query_offset: None,
    };
    let mut conn = open_memory().map_err(|e| vec![whole(e.to_string())])?;
    // `@assert sql:` is the analyst's SQL: bounded like the body.
    let why = install_limits(&mut conn, limits).map_err(|e| vec![whole(e.to_string())])?;
    let stats = load_file(&conn, table_name, csv_path, ReadMode::Exact)
        .map_err(|e| vec![whole(format!("cannot load the table for its tests: {e}"))])?;
    let checker = Checker {
        conn: &conn,
        table: quote_ident(table_name),
        columns: &stats.columns,
        rows: stats.rows,
        own,
    };
    let mut failures = Vec::new();
    if let Some(key) = key {
        let mut msgs = Vec::new();
        checker.key(key, &mut msgs);
        failures.extend(msgs.into_iter().map(whole));
    }
    for (i, a) in asserts.iter().enumerate() {
        if let Some((message, query_offset)) = checker.assertion(a) {
            failures.push(Failure {
                message,
                assert: Some(i),
                query_offset,
            });
        }
    }
    if why.load(std::sync::atomic::Ordering::SeqCst) != 0 {
        // Stopped by the deadline or the run's cancellation: that is the
        // one failure, not the "interrupted" of each check it cut short.
        let e = explain_stop(ExecError::new("interrupted"), &why, limits);
        return Err(vec![whole(e.message().to_string())]);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// The rows behind each failed test, for `sluice test` on the analyst's
/// own terminal: cell values, so never for JSON, statuses or comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingRows {
    /// The test, as written (`@key id`, `@assert not_null(x)`).
    pub test: String,
    pub columns: Vec<String>,
    /// At most the limit asked for, as text (NULL as an empty cell).
    pub rows: Vec<Vec<Option<String>>>,
    /// How many rows fail in all.
    pub total: u64,
}

/// For each test that fails on the table at `csv_path`, the rows that make
/// it fail (the first `limit` of them). `@assert rows` has no failing rows
/// to show; it is listed with none.
pub fn failing_rows(
    csv_path: &Path,
    table_name: &str,
    key: Option<&[String]>,
    asserts: &[Assert],
    limit: usize,
) -> Result<Vec<FailingRows>, ExecError> {
    let conn = open_memory()?;
    let stats = load_file(&conn, table_name, csv_path, ReadMode::Exact)?;
    let t = quote_ident(table_name);
    let has = |c: &str| stats.columns.iter().any(|x| x == c);
    let mut out = Vec::new();
    let mut queries: Vec<(String, String)> = Vec::new();
    if let Some(key) = key.filter(|k| !k.is_empty() && k.iter().all(|c| has(c))) {
        let cols: Vec<String> = key.iter().map(|c| quote_ident(c)).collect();
        let on: Vec<String> = cols.iter().map(|c| format!("t.{c} IS d.{c}")).collect();
        let null: Vec<String> = cols.iter().map(|c| format!("t.{c} IS NULL")).collect();
        queries.push((
            format!("@key {}", key.join(", ")),
            format!(
                "SELECT t.* FROM {t} AS t WHERE EXISTS (SELECT 1 FROM (SELECT {g} FROM {t} GROUP BY {g} HAVING count(*) > 1) AS d WHERE {on}) OR {null} ORDER BY {order}",
                g = cols.join(", "),
                on = on.join(" AND "),
                null = null.join(" OR "),
                order = cols.iter().map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", "),
            ),
        ));
    }
    for a in asserts {
        let q = match a {
            Assert::NotNull(c) if has(c) => {
                format!("SELECT * FROM {t} WHERE {} IS NULL", quote_ident(c))
            }
            Assert::Unique(c) if has(c) => {
                let q = quote_ident(c);
                format!(
                    "SELECT t.* FROM {t} AS t WHERE t.{q} IN (SELECT {q} FROM {t} WHERE {q} IS NOT NULL GROUP BY {q} HAVING count(*) > 1) ORDER BY t.{q}"
                )
            }
            Assert::Sql(query) => query_text(query).to_string(),
            _ => continue,
        };
        queries.push((format!("@assert {a}"), q));
    }
    for (test, q) in queries {
        let total: i64 = match conn.query_row(&format!("{WRAP_START}{q}\n)"), [], |r| r.get(0)) {
            Ok(n) => n,
            Err(_) => continue,
        };
        if total == 0 {
            continue;
        }
        let mut stmt = conn.prepare(&format!("SELECT * FROM (\n{q}\n) LIMIT {limit}"))?;
        let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
        let width = columns.len();
        let mut rows = Vec::new();
        let mut cursor = stmt.query([])?;
        while let Some(row) = cursor.next()? {
            let mut cells = Vec::with_capacity(width);
            for i in 0..width {
                use rusqlite::types::ValueRef as V;
                cells.push(match row.get_ref(i)? {
                    V::Null => None,
                    V::Integer(n) => Some(n.to_string()),
                    V::Real(r) => Some(r.to_string()),
                    V::Text(b) | V::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
                });
            }
            rows.push(cells);
        }
        out.push(FailingRows {
            test,
            columns,
            rows,
            total: u64::try_from(total).unwrap_or(0),
        });
    }
    Ok(out)
}

struct Checker<'a> {
    conn: &'a Connection,
    /// The quoted table name.
    table: String,
    columns: &'a [String],
    rows: u64,
    /// The node's own text, when the messages may leave the machine:
    /// column names it does not contain came from the data and are
    /// counted, not named. `None` on the local terminal.
    own: Option<&'a str>,
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
            // Names the node's text holds are the schema; others (a pivot
            // over the data) are data, and only counted.
            let (shown, hidden): (Vec<&String>, Vec<&String>) = self
                .columns
                .iter()
                .partition(|c| self.own.is_none_or(|t| super::mentions(t, c)));
            let mut msg = format!("no column {col} in the table");
            if let Some(s) =
                crate::pipeline::directive::nearest(col, shown.iter().map(|c| c.as_str()))
            {
                msg.push_str(&format!(" (did you mean {s}?)"));
            }
            let mut names: Vec<String> = shown.iter().map(|c| c.to_string()).collect();
            if !hidden.is_empty() {
                names.push(super::data_named(hidden.len()));
            }
            msg.push_str(&format!("; its columns are: {}", names.join(", ")));
            Err(msg)
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

    /// `None` when the assertion holds, else the failure (and, for a query
    /// that failed to run, where in the query).
    fn assertion(&self, a: &Assert) -> Option<(String, Option<usize>)> {
        let mut query_offset = None;
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
                        (
                            format!(
                                "@assert {a} failed: {} {}",
                                self.rows,
                                plural(self.rows, "row", "rows")
                            ),
                            None,
                        )
                    });
                }
                Assert::Sql(query) => {
                    let q = query_text(query);
                    self.count(&format!("{WRAP_START}{q}\n)"))
                        .map(|n| {
                            (n > 0).then(|| {
                                format!(
                                    "the query returned {n} failing {}",
                                    plural(n, "row", "rows")
                                )
                            })
                        })
                        .map_err(|e| {
                            // An offset counts from the wrapper: make it the
                            // query's own (the query's leading space trimmed).
                            let lead = query.len() - query.trim_start().len();
                            query_offset = e
                                .offset()
                                .map(|o| o.saturating_sub(WRAP_START.len() + RELATIVE_BIAS))
                                .or_else(|| super::sqlite::name_in(q, 0, e.message()))
                                .map(|o| (o + lead).min(query.len()));
                            e.to_string()
                        })
                }
            };
        match result {
            Ok(None) => None,
            Ok(Some(detail)) | Err(detail) => {
                Some((format!("@assert {a}: {detail}"), query_offset))
            }
        }
    }
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        csv: &Path,
        table: &str,
        key: Option<&[String]>,
        asserts: &[Assert],
    ) -> Result<(), Vec<Failure>> {
        check_table(csv, table, key, asserts, &SqlLimits::default(), None)
    }

    #[test]
    fn an_endless_assert_sql_stops_at_the_timeout() {
        let p = table("id\n1\n2\n");
        let asserts = vec![Assert::Sql(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
             SELECT n FROM r WHERE n < 0"
                .into(),
        )];
        let limits = SqlLimits {
            timeout: std::time::Duration::from_millis(300),
            cancel: None,
        };
        let t = std::time::Instant::now();
        let e = check_table(&p, "T", None, &asserts, &limits, None).unwrap_err();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("timed out"), "{e:?}");
    }
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

    fn messages(f: Vec<Failure>) -> Vec<String> {
        f.into_iter().map(|f| f.message).collect()
    }

    fn keys(cols: &[&str]) -> Vec<String> {
        cols.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn key_failures_are_counts() {
        let p = table(PATIENTS);
        let e = check(&p, "Patient", Some(&keys(&["patient_id"])), &[])
            .map_err(messages)
            .unwrap_err();
        assert_eq!(
            e,
            vec![
                "@key patient_id: 2 duplicate keys",
                "@key patient_id: 1 row with a NULL key column",
            ]
        );
        check(&p, "Patient", Some(&keys(&["site", "mrn"])), &[])
            .map_err(messages)
            .unwrap_err();
        assert_eq!(
            check(&p, "Patient", Some(&keys(&["patient_id", "mrn"])), &[])
                .map_err(messages)
                .unwrap_err(),
            vec!["@key patient_id, mrn: 2 rows with a NULL key column"]
        );
        let e = check(&p, "Patient", Some(&keys(&["patient_id", "nope"])), &[])
            .map_err(messages)
            .unwrap_err();
        assert_eq!(
            e,
            vec![
                "@key patient_id, nope: no column nope in the table; its columns are: patient_id, site, mrn"
            ]
        );
        let ok = table("id,v\n1,a\n2,a\n");
        check(&ok, "T", Some(&keys(&["id"])), &[]).unwrap();
        check(&ok, "T", Some(&keys(&["id", "v"])), &[]).unwrap();
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
        let e = check(&p, "Patient", None, &asserts)
            .map_err(messages)
            .unwrap_err();
        assert_eq!(
            e,
            vec![
                "@assert not_null(patient_id): 1 row has NULL patient_id",
                "@assert not_null(mrn): 1 row has NULL mrn",
                "@assert unique(mrn): 1 value occurs more than once",
                "@assert unique(site): 2 values occur more than once",
                "@assert rows >= 10 failed: 6 rows",
                "@assert sql: SELECT * FROM Patient WHERE patient_id > 2;: the query returned 2 failing rows",
                "@assert not_null(gone): no column gone in the table; its columns are: patient_id, site, mrn",
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
        let e = check(&p, "Patient", None, &passing)
            .map_err(messages)
            .unwrap_err();
        assert_eq!(e, vec!["@assert not_null(site): 1 row has NULL site"]);
        let ok = table("id,v\n1,a\n2,b\n");
        check(
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
        let e = check(
            &p,
            "T",
            None,
            &[Assert::Rows {
                op: CmpOp::Gt,
                value: 0,
            }],
        )
        .map_err(messages)
        .unwrap_err();
        assert_eq!(e, vec!["@assert rows > 0 failed: 0 rows"]);
    }

    #[test]
    fn failing_rows_show_the_rows_behind_each_failure() {
        let p = table(PATIENTS);
        let rows = failing_rows(
            &p,
            "Patient",
            Some(&keys(&["patient_id"])),
            &[
                Assert::NotNull("mrn".into()),
                Assert::Rows {
                    op: CmpOp::Gt,
                    value: 100,
                },
                Assert::NotNull("patient_id".into()),
            ],
            2,
        )
        .unwrap();
        let tests: Vec<(&str, u64, usize)> = rows
            .iter()
            .map(|r| (r.test.as_str(), r.total, r.rows.len()))
            .collect();
        assert_eq!(
            tests,
            [
                ("@key patient_id", 5, 2),
                ("@assert not_null(mrn)", 1, 1),
                ("@assert not_null(patient_id)", 1, 1),
            ]
        );
        assert_eq!(rows[0].columns, ["patient_id", "site", "mrn"]);
        // NULL first in ORDER BY, then the duplicated 2s.
        assert_eq!(rows[0].rows[0], [None, Some("c".into()), Some("z".into())]);
        assert_eq!(rows[1].rows[0], [Some("2".into()), Some("a".into()), None]);
    }

    #[test]
    fn a_query_error_is_placed_in_the_query() {
        let p = table("id\n1\n");
        let f = check(&p, "T", None, &[Assert::Sql("SELECT * FORM T".into())]).unwrap_err();
        assert_eq!(f[0].assert, Some(0));
        // `FORM` starts at byte 9 of the query.
        assert_eq!(f[0].query_offset, Some(9), "{}", f[0].message);
        // SQLite gives no offset for a missing table: its name is found.
        let f = check(&p, "T", None, &[Assert::Sql("SELECT * FROM Nope".into())]).unwrap_err();
        assert_eq!(f[0].query_offset, Some(14), "{}", f[0].message);
    }
}
