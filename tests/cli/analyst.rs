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

/// A `{{param}}` before the error on its line: the column counts the
/// text as written, not the value put in its place.
#[test]
fn a_sql_error_after_a_template_is_placed_in_the_text_as_written() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n").file(
        "clinics/a/U.sql",
        "-- @depend ./T\n-- @param factor=1000000\n-- @assert sql: SELECT * FROM U WHERE {{ factor }} < missing_col\nSELECT id, {{ factor }} * n FROM T;\n",
    );
    // `n` is at column 27 as written, 22 after templates.
    r.sluice(&["run"])
        .failure()
        .stdout_has("clinics/a/U.sql:4:27: SQL error: no such column: n");
    // The assertion's query, with the body fixed.
    r.file(
        "clinics/a/U.sql",
        "-- @depend ./T\n-- @param factor=1000000\n-- @assert sql: SELECT * FROM U WHERE {{ factor }} < missing_col\nSELECT id, {{ factor }} * id AS n FROM T;\n",
    );
    r.sluice(&["run"])
        .failure()
        .stdout_has("clinics/a/U.sql:3:54: @assert sql: SELECT * FROM U WHERE 1000000 < missing_col: SQL error: no such column: missing_col");
    // `check` parses the text after templates and places it the same way.
    r.file(
        "clinics/a/U.sql",
        "-- @depend ./T\n-- @param factor=1000000\n-- @assert sql: SELECT * FROM U WHERE {{ factor }} < )\nSELECT id, {{ factor }} * FROM T;\n",
    );
    let out = r.sluice(&["check"]);
    out.failure();
    assert_eq!(
        out.stderr.lines().take(2).collect::<Vec<_>>(),
        [
            "clinics/a/U.sql:3:54: @assert sql: SQL error: near \")\": syntax error",
            "clinics/a/U.sql:4:27: SQL error: near \"FROM\": syntax error",
        ],
        "{}",
        out.stderr
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

/// A planted duplicate key: `sluice test` prints the failing rows on the
/// terminal; the JSON of a run with the same failure holds counts only.
#[test]
fn sluice_test_prints_the_rows_of_a_duplicate_key_and_json_holds_no_cell_value() {
    let r = Repo::new();
    r.file(
        "clinics/a/Patient.csv",
        "mrn,name\nMRN-0007,Ada Lovelace\nMRN-0042,Grace Hopper\nMRN-0007,Alan Turing\n",
    )
    .file(
        "clinics/a/Cohort.sql",
        "-- @depend ./Patient\n-- @key mrn\n-- @assert not_null(name)\nSELECT mrn, name FROM Patient;\n",
    );
    let out = r.sluice(&["test", "clinics/a/Cohort"]);
    out.failure();
    assert_eq!(
        out.stdout,
        "clinics/a/Cohort: 1 of 2 tests failed\n  @key mrn: 1 duplicate key\n    mrn,name\n    MRN-0007,Ada Lovelace\n    MRN-0007,Alan Turing\n"
    );

    let run = r.sluice(&["run", "--json"]);
    run.failure();
    let text = run.stdout.clone();
    assert!(
        text.contains("@key mrn: 1 duplicate key"),
        "the failure is described: {text}"
    );
    for value in ["MRN-0007", "Ada", "Turing", "Grace"] {
        assert!(!text.contains(value), "{value} leaked into JSON: {text}");
    }
    // Nor into the manifest or the human summary's error line.
    let plain = r.sluice(&["run"]);
    for value in ["MRN-0007", "Ada", "Turing"] {
        assert!(!plain.stdout.contains(value), "{value}: {}", plain.stdout);
    }

    // `cat` shows the table the tests failed on, with a warning.
    let cat = r.sluice(&["cat", "clinics/a/Cohort"]);
    cat.success()
        .stdout_has("MRN-0007,Alan Turing")
        .stderr_has("warning: the data tests of clinics/a/Cohort failed");

    // Fixed, the same command passes.
    r.file(
        "clinics/a/Patient.csv",
        "mrn,name\nMRN-0007,Ada Lovelace\nMRN-0042,Grace Hopper\n",
    );
    r.sluice(&["test", "clinics/a"])
        .success()
        .stdout_has("clinics/a/Cohort: ok (2 tests)");
}

#[test]
fn cat_with_a_short_pipeline_name_suggests_the_full_one() {
    let r = Repo::new();
    r.file("clinics/north/Visit.csv", "id\n1\n");
    r.sluice(&["run"]).success();
    let out = r.sluice(&["cat", "north/Visit"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    out.stderr_has("no pipeline `north`; did you mean clinics/north/Visit?");
}

/// `run clinics/north` needs only north's sources and parameters; `check`
/// still reports south's problems.
#[test]
fn running_one_pipeline_needs_only_its_own_inputs() {
    let r = Repo::new();
    r.file(
        "common/g/Visit.sql",
        "-- @source data://{{clinic}}/visits.csv\nSELECT * FROM visits;\n",
    )
    .file(
        "clinics/north/g.sql",
        "-- @include common/g\n-- @param clinic=north\n",
    )
    .file("clinics/south/g.sql", "-- @include common/g\n")
    .file(
        "clinics/south/Extra.sql",
        "-- @source data://south/missing.csv\nSELECT * FROM missing;\n",
    )
    .file("data/north/visits.csv", "id\n1\n");
    r.sluice(&["check"])
        .failure()
        .stderr_has("undefined parameter `{{clinic}}`");
    r.sluice(&["plan"])
        .failure()
        .stderr_has("clinics/south/Extra.sql:1: @source data://south/missing.csv");
    r.sluice(&["plan", "clinics/north"])
        .success()
        .stdout_has("new        Visit");
    r.sluice(&["plan", "clinics/south"])
        .failure()
        .stderr_has("undefined parameter `{{clinic}}`");
    r.sluice(&["run", "clinics/north"])
        .success()
        .stdout_has("computed          1 row   Visit");
    r.sluice(&["run", "clinics/south"])
        .failure()
        .stderr_has("undefined parameter `{{clinic}}`");
}

/// CSV problems name the file and line; an encoding problem says how to
/// convert the file.
#[test]
fn csv_problems_name_the_file_and_line() {
    let r = Repo::new();
    r.file(
        "clinics/a/P.sql",
        "-- @source data://a/patients.csv\nSELECT * FROM patients;\n",
    )
    .file("data/a/patients.csv", "id,name\n1,x\n2,y,extra\n")
    .file("clinics/a/Static.csv", "id,v\n1,\"open\n");
    let out = r.sluice(&["run"]);
    out.failure()
        .stdout_has("data://a/patients.csv:3: the row has 3 fields, the header has 2")
        .stdout_has("clinics/a/Static.csv:2: not valid CSV: a quoted field is never closed");
    std::fs::write(
        r.path().join("data/a/patients.csv"),
        b"id,name\n1,Jos\xe9\n",
    )
    .unwrap();
    r.sluice(&["run", "clinics/a"]).failure().stdout_has(
        "data://a/patients.csv:2: not valid UTF-8; convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 patients.csv > patients.csv.utf8`",
    );
}

#[test]
fn sluice_test_takes_a_selection() {
    let r = Repo::new();
    r.file("clinics/a/Patient.csv", "mrn\nM1\nM1\n")
        .file(
            "clinics/a/Cohort.sql",
            "-- @depend ./Patient\n-- @key mrn\nSELECT mrn FROM Patient;\n",
        )
        .file(
            "clinics/a/Count.sql",
            "-- @depend ./Cohort\n-- @assert rows > 5\nSELECT count(*) AS n FROM Cohort;\n",
        )
        .file(
            "clinics/b/Other.sql",
            "-- @assert rows > 0\nSELECT 1 AS x;\n",
        );
    // Cohort and what follows it: both tests run, both fail; b is not touched.
    let out = r.sluice(&["test", "-s", "clinics/a/Cohort+"]);
    out.failure();
    assert!(
        out.stdout.contains("clinics/a/Cohort: 1 of 1 test failed"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("clinics/a/Count"), "{}", out.stdout);
    assert!(!out.stdout.contains("clinics/b"), "{}", out.stdout);
    // Excluding the failing ones leaves b's passing test.
    let out = r.sluice(&["test", "-s", "Other", "--exclude", "clinics/a/*"]);
    out.success();
    assert!(out.stdout.contains("clinics/b/Other"), "{}", out.stdout);
    // Neither targets nor a selection: a usage error naming what is missing.
    let none = r.sluice(&["test"]);
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(none.stderr.contains("PIPELINE/NODE"), "{}", none.stderr);
}
