//! `check`, `plan`, `show`, `graph` and `--at` on the example and on
//! repositories built in temp dirs.

use crate::util::{self, Repo, example_dir, sluice_in};

/// Two clinics mounting one group; clinic b overrides Patient.
pub fn two_clinics() -> Repo {
    let r = Repo::new();
    r.file(
        "common/g/Patient.sql",
        "-- @source data://{{clinic}}/patients.csv\n-- @key id\nSELECT * FROM patients;\n",
    )
    .file(
        "common/g/Stats.sql",
        "-- @depend /reference/codes\nSELECT count(*) AS n FROM codes;\n",
    )
    .file(
        "common/g/Joined.sql",
        "-- @depend ./Patient\n-- @depend ./Stats\nSELECT * FROM Patient, Stats;\n",
    )
    .file("reference/codes.csv", "code,loinc\nALB,1751-7\n")
    .file(
        "clinics/a/g.sql",
        "-- @include common/g\n-- @param clinic=a\n",
    )
    .file(
        "clinics/b/g.sql",
        "-- @include common/g\n-- @param clinic=b\n",
    )
    .file(
        "clinics/b/Patient.sql",
        "-- @source data://b/export.csv\n-- @key id\nSELECT pt AS id FROM export;\n",
    )
    .file("data/a/patients.csv", "id\n1\n2\n")
    .file("data/b/export.csv", "pt\n7\n");
    r
}

fn definitions(run: &util::Run) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for plan in run.json()["plans"].as_array().expect("plans") {
        let p = plan["pipeline"].as_str().expect("pipeline");
        for n in plan["nodes"].as_array().expect("nodes") {
            out.insert(
                format!("{p}:{}", n["name"].as_str().expect("name")),
                n["definition"].as_str().unwrap_or("").to_string(),
            );
        }
    }
    out
}

#[test]
fn example_checks_and_plans() {
    // A copy: the example's own .sluice may hold an analyst's runs.
    let ex = Repo::example();
    let r = sluice_in(ex.path(), &["check"]);
    r.success().stdout_has("ok: 2 pipelines");
    let plan = sluice_in(ex.path(), &["plan", "--json"]);
    plan.success();
    let v = plan.json();
    let plans = v["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[0]["pipeline"], "clinics/clinic_a");
    for p in plans {
        for n in p["nodes"].as_array().unwrap() {
            assert_eq!(n["change"], "new", "no production manifest yet: {n}");
            assert!(n["definition"].as_str().unwrap().starts_with("sha256:"));
        }
    }
}

#[test]
fn repo_found_from_a_subdirectory() {
    let r = two_clinics();
    sluice_in(&r.path().join("clinics/a"), &["check"]).success();
}

#[test]
fn identical_nodes_in_two_clinics_share_a_definition_hash() {
    let r = two_clinics();
    let d = definitions(r.sluice(&["plan", "--json"]).success());
    // Stats resolves identically in both clinics; Patient does not.
    assert_eq!(d["clinics/a:Stats"], d["clinics/b:Stats"]);
    assert_ne!(d["clinics/a:Patient"], d["clinics/b:Patient"]);
    // Joined reads each clinic's Patient, so it differs too.
    assert_ne!(d["clinics/a:Joined"], d["clinics/b:Joined"]);
}

#[test]
fn unrelated_and_comment_changes_leave_hashes_alone() {
    let r = two_clinics();
    let before = definitions(r.sluice(&["plan", "--json"]).success());
    // A comment-only change in a file clinic a does not use, a README, and
    // an edit of clinic b's own Patient leave clinic a untouched.
    r.file("clinics/b/Patient.sql", "-- Clinic b exports `pt`.\n-- @source data://b/export.csv\n-- @key id\nSELECT pt AS id FROM export;\n")
        .file("clinics/a/README.md", "notes\n");
    let commented = definitions(r.sluice(&["plan", "--json"]).success());
    for k in ["clinics/a:Patient", "clinics/a:Joined", "clinics/a:Stats"] {
        assert_eq!(before[k], commented[k], "{k} must not change");
    }
    r.file(
        "clinics/b/Patient.sql",
        "-- @source data://b/export.csv\n-- @key id\nSELECT pt AS id FROM export WHERE pt > 0;\n",
    );
    let after = definitions(r.sluice(&["plan", "--json"]).success());
    for k in ["clinics/a:Patient", "clinics/a:Joined", "clinics/a:Stats"] {
        assert_eq!(before[k], after[k], "{k} must not change");
    }
    assert_ne!(before["clinics/b:Patient"], after["clinics/b:Patient"]);
    assert_ne!(
        before["clinics/b:Joined"], after["clinics/b:Joined"],
        "downstream of the edit"
    );
    // Source data is part of the definition.
    r.file("data/a/patients.csv", "id\n1\n2\n3\n");
    let data = definitions(r.sluice(&["plan", "--json"]).success());
    assert_ne!(after["clinics/a:Patient"], data["clinics/a:Patient"]);
    assert_eq!(after["clinics/b:Patient"], data["clinics/b:Patient"]);
}

#[test]
fn check_reports_every_problem_with_path_and_line() {
    let r = Repo::new();
    r.file("clinics/a/A.sql", "-- @key id\n-- @depnd ./B\nSELECT 1;\n")
        .file("clinics/a/B.sql", "-- @depend ./Patiant\nSELECT 1;\n")
        .file("clinics/a/Patient.sql", "SELECT 1;\n")
        .file("clinics/a/C.sql", "-- @depend ./D\nSELECT 1;\n")
        .file("clinics/a/D.sql", "-- @depend ./C\nSELECT 1;\n")
        .file("clinics/a/E.sql", "SELECT '{{site}}';\n")
        .file(
            "clinics/a/F.sql",
            "-- @include ../../../etc/passwd\nSELECT 1;\n",
        )
        .file("clinics/a/G.sql", "-- nothing here\n")
        .file("clinics/b/m.sql", "-- @include g1\n-- @include g2\n")
        .file("g1/X.sql", "SELECT 1;\n")
        .file("g2/X.sql", "SELECT 2;\n")
        .file("clinics/c/m.sql", "-- @include clinics/c/_self.sql\n")
        .file("clinics/c/_self.sql", "-- @include clinics/c/_other.sql\n")
        .file("clinics/c/_other.sql", "-- @include clinics/c/_self.sql\n");
    let out = r.sluice(&["check"]);
    out.failure();
    for expected in [
        "clinics/a/A.sql:2: unknown directive @depnd (did you mean @depend?)",
        "clinics/a/B.sql:1: @depend ./Patiant: no node `Patiant` in pipeline clinics/a (did you mean `Patient`?)",
        "clinics/a/C.sql:1: dependency cycle: C -> D -> C",
        "clinics/a/E.sql:1: undefined parameter `{{site}}`",
        "clinics/a/F.sql:1: @include ../../../etc/passwd: path `../../../etc/passwd` leaves the repository",
        "clinics/a/G.sql:1: empty body",
        "clinics/b/m.sql:2: node `X` comes from two mounts",
        "clinics/c/_other.sql:1: include cycle: clinics/c/_self.sql -> clinics/c/_other.sql -> clinics/c/_self.sql",
    ] {
        out.stderr_has(expected);
    }
    out.stderr_has("problems found");
}

#[test]
fn symlink_out_of_the_repo_is_refused() {
    let r = Repo::new();
    r.file("clinics/a/A.sql", "SELECT 1;\n");
    std::os::unix::fs::symlink("/etc/hostname", r.path().join("clinics/a/Evil.sql")).unwrap();
    r.sluice(&["check"])
        .failure()
        .stderr_has("clinics/a/Evil.sql:1:");
}

#[test]
fn missing_config_says_what_to_write() {
    let r = Repo::empty();
    r.file("clinics/a/A.sql", "SELECT 1;\n");
    let out = sluice_in(r.path(), &["check"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    out.stderr_has("no sluice.toml").stderr_has("pipelines = [");
    r.file("sluice.toml", "[project]\npipelinez = []\n");
    r.sluice(&["check"])
        .failure()
        .stderr_has("sluice.toml:2: unknown field `pipelinez`");
    r.file("sluice.toml", "[project]\npipelines = [\"nothing/*\"]\n");
    r.sluice(&["check"])
        .failure()
        .stderr_has("matches no directory");
}

#[test]
fn at_reads_a_commit_while_the_working_tree_differs() {
    let r = two_clinics();
    let first = r.commit_all("first");
    let d1 = definitions(r.sluice(&["plan", "--json"]).success());
    // Break the working tree and change a node; the commit still reads clean.
    r.file("clinics/a/Broken.sql", "-- @depend ./Nope\nSELECT 1;\n");
    r.file(
        "common/g/Stats.sql",
        "-- @depend /reference/codes\nSELECT count(*) + 1 AS n FROM codes;\n",
    );
    r.sluice(&["check"]).failure().stderr_has("Broken.sql");
    r.sluice(&["--at", "HEAD", "check"]).success();
    let at = definitions(r.sluice(&["--at", &first, "plan", "--json"]).success());
    assert_eq!(
        d1, at,
        "plan at the commit equals the plan of the clean tree"
    );
    // Commit the change; HEAD~1 is the old version, HEAD the new.
    r.remove("clinics/a/Broken.sql");
    r.commit_all("second");
    let head = definitions(r.sluice(&["--at", "HEAD", "plan", "--json"]).success());
    let prev = definitions(r.sluice(&["--at", "HEAD~1", "plan", "--json"]).success());
    assert_eq!(prev, d1);
    assert_ne!(head["clinics/a:Stats"], prev["clinics/a:Stats"]);
    r.sluice(&["--at", "no-such-rev", "check"])
        .stderr_has("no-such-rev");
}

#[test]
fn at_works_when_the_repo_is_a_subdirectory_of_a_git_work_tree() {
    let outer = Repo::empty();
    util::copy_dir(two_clinics().path(), &outer.path().join("pipelines"));
    outer.commit_all("nested");
    let out = sluice_in(
        &outer.path().join("pipelines"),
        &["--at", "HEAD", "plan", "--json"],
    );
    out.success();
    assert_eq!(out.json()["plans"].as_array().unwrap().len(), 2);
}

#[test]
fn show_explains_where_each_part_came_from() {
    let r = two_clinics();
    let out = r.sluice(&["show", "clinics/b/Patient"]);
    out.success()
        .stdout_has("file        clinics/b/Patient.sql")
        .stdout_has("overrides   common/g/Patient.sql")
        .stdout_has("action      engine sqlite (from action/sql/sqlite, by file extension)")
        .stdout_has("definition  sha256:");
    let out = r.sluice(&["show", "clinics/a/Patient"]);
    out.success()
        .stdout_has("mounted by  clinics/a/g.sql")
        .stdout_has("param       clinic=a (set at clinics/a/g.sql:2)")
        .stdout_has("source      data://a/patients.csv as table patients");
    r.sluice(&["show", "clinics/a/Patiant"])
        .stderr_has("did you mean clinics/a/Patient?");
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let r = two_clinics();
    let dot = r.sluice(&["graph", "clinics/a"]);
    dot.success()
        .stdout_has("digraph sluice")
        .stdout_has("label=\"Joined\"");
    assert_eq!(dot.stdout.matches("->").count(), 3);
    let m = r.sluice(&["graph", "clinics/a", "--format", "mermaid"]);
    m.success()
        .stdout_has("flowchart LR")
        .stdout_has("[\"/reference/codes\"]");
    assert_eq!(m.stdout.matches("-->").count(), 3);
}

#[test]
fn plan_of_an_unknown_pipeline_is_an_error() {
    let r = two_clinics();
    let out = r.sluice(&["plan", "clinics/zzz"]);
    assert_eq!(out.code, 2);
    out.stderr_has("no pipeline `clinics/zzz`; the pipelines are: clinics/a, clinics/b");
}

#[test]
fn missing_source_data_is_reported_by_plan() {
    let r = two_clinics();
    r.remove("data/b/export.csv");
    r.sluice(&["check"]).success();
    r.sluice(&["plan"])
        .failure()
        .stderr_has("clinics/b/Patient.sql:1: @source data://b/export.csv:");
}

#[test]
fn help_teaches() {
    let r = sluice_in(&example_dir(), &["--help"]);
    r.success()
        .stdout_has("sluice check")
        .stdout_has("Commands:");
    let r = sluice_in(&example_dir(), &["plan", "--help"]);
    r.success().stdout_has("modified").stdout_has("affected");
}

/// Each mistake that used to pass without a word: `check` names the file,
/// the line and what to write instead.
#[test]
fn silent_mistakes_are_errors_with_path_and_line() {
    let r = Repo::new();
    r.file(
        "common/g/Visits.sql",
        "-- @param min_visits=1\n-- @key id\nSELECT 1 AS id WHERE {{min_visits}} > 0;\n\n-- @assert rows > 100\n",
    )
    .file(
        "common/g/Checked.sql",
        "-- @assert sql: SELECT * FROM Checked WHERE n > {{max_n}}\nSELECT 1 AS n;\n",
    )
    .file(
        "clinics/a/g.sql",
        "-- @include common/g\n-- @param min_visit=3\n",
    )
    .file("clinics/a/Lab Results.sql", "SELECT 1 AS x;\n");
    let out = r.sluice(&["check"]);
    out.failure();
    let expected = [
        "clinics/a/Lab Results.sql:1: node name `Lab Results` (the file name without its extension) must be letters, digits and `_`: `@depend ./Lab Results` could not name it; rename the file, e.g. to clinics/a/Lab_Results.sql",
        "clinics/a/g.sql:2: @param min_visit is set here, but no node of clinics/a declares or uses `min_visit` (did you mean `min_visits`?)",
        "common/g/Checked.sql:1: undefined parameter `{{max_n}}`: declare it with `@param max_n=...` in the node or set it in the pipeline's mount file (in pipeline clinics/a)",
        "common/g/Visits.sql:5: @assert below the body is not read: directives go in the leading comment block; move this line above line 3",
        "sluice: 4 problems found",
    ];
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn zero_workers_are_refused() {
    let r = two_clinics();
    let out = r.sluice(&["run", "-j", "0"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    out.stderr_has("0 workers would run nothing; use -j 1 or more");
}

#[test]
fn a_missing_config_is_the_same_error_with_or_without_repo() {
    let r = Repo::empty();
    r.file("clinics/a/A.sql", "SELECT 1;\n");
    let without = sluice_in(r.path(), &["check"]);
    let with = r.sluice(&["check"]);
    assert_eq!(
        (without.code, with.code),
        (2, 2),
        "{}\n{}",
        without.stderr,
        with.stderr
    );
    with.stderr_has("no sluice.toml in")
        .stderr_has("pipelines = [");
}

#[test]
fn one_is_singular() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n");
    r.sluice(&["check"])
        .success()
        .stdout_has("ok: 1 pipeline, 1 node\n");
    r.sluice(&["plan"])
        .success()
        .stdout_has("  1 node: 1 new; 1 to run");
    r.sluice(&["run"])
        .success()
        .stdout_has("computed          1 row   T")
        .stdout_has("  1 node: 1 computed");
}
