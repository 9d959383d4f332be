//! What an analyst sees when something is wrong: errors at the line and
//! column of the file they wrote, and failed data tests they can debug on
//! their own terminal (`sluice test`, `sluice cat`), with no cell value in
//! JSON.

use crate::util::Repo;

#[test]
fn a_python_traceback_names_the_repository_path_and_line() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n").file(
        "clinics/a/Weight.py",
        "# Weight summary.\n# @depend ./T\n# @param k=1\nimport os\n\nx = 1\nraise ValueError('boom')\n",
    );
    let out = r.sluice(&["run"]);
    out.failure()
        .stdout_has("File \"clinics/a/Weight.py\", line 7")
        .stdout_has("ValueError");
}

#[test]
fn a_sql_error_is_reported_at_its_line_and_column() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n").file(
        "clinics/a/U.sql",
        "-- @depend ./T\n-- @key id\n\nSELECT id,\n       nope + 1 AS n\n  FROM T;\n",
    );
    let out = r.sluice(&["run"]);
    out.failure()
        .stdout_has("clinics/a/U.sql:5:8: SQL error: no such column: nope");
    // The same in JSON, where the text may leave the machine.
    let json = r.sluice(&["run", "--json"]);
    let v = json.json();
    assert_eq!(
        v["runs"][0]["nodes"][1]["error"],
        "clinics/a/U.sql:5:8: SQL error: no such column: nope"
    );
}

#[test]
fn an_assert_sql_error_is_reported_at_its_line_and_column() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n").file(
        "clinics/a/U.sql",
        "-- @depend ./T\n-- @assert rows > 0\n--   @assert sql: SELECT * FROM U WHERE missing_col > 0\nSELECT id FROM T;\n",
    );
    r.sluice(&["run"]).failure().stdout_has(
        "data test failed: clinics/a/U.sql:3:41: @assert sql: SELECT * FROM U WHERE missing_col > 0: SQL error: no such column: missing_col",
    );
}

#[test]
fn check_finds_sql_syntax_errors_without_data() {
    let r = Repo::new();
    r.file(
        "common/g/_base.sql",
        "-- shared query\nSELECT id,\n  FROM patients;\n",
    )
    .file(
        "clinics/a/P.sql",
        "-- @include common/g/_base.sql\n-- @source data://p.csv\n",
    )
    .file(
        "clinics/a/Q.sql",
        "-- @source data://p.csv\n-- @assert sql: SELECT * FROM Q WHERE id >> 'x\nSELECT * FROM NoSuchTableIsFine;\n",
    )
    .file("data/p.csv", "id\n1\n");
    let out = r.sluice(&["check"]);
    out.failure();
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [
            "clinics/a/Q.sql:2:45: @assert sql: SQL error: unrecognized token: \"'x\"",
            "common/g/_base.sql:3:3: SQL error: near \"FROM\": syntax error",
            "sluice: 2 problems found",
        ]
    );
}
