//! Resolver tests over an in-memory tree: mounts, overrides, inheritance,
//! parameters, and every diagnostic with its `path:line`.

use super::graph::{Action, Graph, Node};
use super::path::RepoPath;
use super::vfs::MemVfs;
use super::{Diagnostic, compile};

fn build(files: &[(&str, &str)]) -> MemVfs {
    let mut v = MemVfs::new();
    for (p, text) in files {
        v.insert(p, text.as_bytes());
    }
    v
}

fn resolve(files: &[(&str, &str)], pipelines: &[&str]) -> (Graph, Vec<Diagnostic>) {
    let v = build(files);
    let p: Vec<RepoPath> = pipelines
        .iter()
        .map(|p| RepoPath::parse(p).unwrap())
        .collect();
    compile(&v, &p)
}

fn ok(files: &[(&str, &str)], pipelines: &[&str]) -> Graph {
    let (g, d) = resolve(files, pipelines);
    assert!(d.is_empty(), "unexpected diagnostics: {d:#?}");
    g
}

fn errors(files: &[(&str, &str)], pipelines: &[&str]) -> Vec<String> {
    resolve(files, pipelines)
        .1
        .iter()
        .map(|d| d.to_string())
        .collect()
}

fn node<'a>(g: &'a Graph, dir: &str, name: &str) -> &'a Node {
    g.lookup(&RepoPath::parse(dir).unwrap(), name)
        .unwrap_or_else(|| panic!("no node {dir}/{name}"))
}

/// A shared group, two clinics mounting it, one overriding a node.
fn clinics() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "common/varian/Patient.sql",
            "-- @source data://{{clinic}}/patients.csv\n-- @key patient_id\nSELECT * FROM patients;\n",
        ),
        (
            "common/varian/Labs.sql",
            "-- @depend ./Patient\n-- @depend /reference/lab_map\nSELECT * FROM Patient JOIN lab_map;\n",
        ),
        ("common/varian/README.md", "# Varian group\nNot a node.\n"),
        ("reference/lab_map.csv", "local_code,loinc\nALB,1751-7\n"),
        (
            "clinics/a/varian.sql",
            "-- @include common/varian\n-- @param clinic=a\n",
        ),
        (
            "clinics/b/varian.sql",
            "-- @include common/varian\n-- @param clinic=b\n",
        ),
        (
            "clinics/b/Patient.sql",
            "-- @source data://{{clinic}}/export.csv\n-- @key patient_id\nSELECT pt_id AS patient_id FROM export;\n",
        ),
    ]
}

#[test]
fn mounts_and_overrides_resolve() {
    let g = ok(&clinics(), &["clinics/a", "clinics/b"]);
    let a_patient = node(&g, "clinics/a", "Patient");
    assert_eq!(a_patient.file.as_str(), "common/varian/Patient.sql");
    assert_eq!(a_patient.via[0].as_str(), "clinics/a/varian.sql");
    assert_eq!(a_patient.sources[0].path.as_str(), "a/patients.csv");
    assert_eq!(a_patient.sources[0].table, "patients");
    assert_eq!(a_patient.action.action, Action::Engine("sqlite".into()));

    let b_patient = node(&g, "clinics/b", "Patient");
    assert_eq!(b_patient.file.as_str(), "clinics/b/Patient.sql");
    assert_eq!(
        b_patient.overrides.as_ref().unwrap().as_str(),
        "common/varian/Patient.sql"
    );
    assert_eq!(b_patient.sources[0].path.as_str(), "b/export.csv");

    // The mounted Labs depends on each clinic's own Patient (polymorphism).
    let b_labs = node(&g, "clinics/b", "Labs");
    let dep = g.nodes[b_labs.deps[0].node.unwrap()].file.clone();
    assert_eq!(dep.as_str(), "clinics/b/Patient.sql");
    let lab_map = &g.nodes[b_labs.deps[1].node.unwrap()];
    assert_eq!(lab_map.action.action, Action::Static);
    assert_eq!(b_labs.deps[1].table(), "lab_map");

    // The pipeline runs its own nodes and the foreign one it reaches, in order.
    let names: Vec<String> = g
        .pipeline_nodes(&RepoPath::parse("clinics/a").unwrap())
        .iter()
        .map(|id| g.nodes[*id].display_name(&RepoPath::parse("clinics/a").unwrap()))
        .collect();
    assert_eq!(names.len(), 3);
    assert_eq!(names.last().unwrap(), "Labs");
    assert!(names.contains(&"/reference/lab_map".to_string()));
}

#[test]
fn nested_mounts_and_param_precedence() {
    let g = ok(
        &[
            (
                "common/base/Physician.sql",
                "-- @param units=mg\n-- @source data://{{clinic}}/phys_{{units}}.csv\nSELECT * FROM phys_{{units}};\n",
            ),
            (
                "common/varian/base.sql",
                "-- @include /common/base\n-- @param units=g\n-- @param clinic=inner\n",
            ),
            (
                "common/varian/Dx.sql",
                "-- @depend ./Physician\n-- @param units=kg\nSELECT '{{units}}' FROM Physician;\n",
            ),
            (
                "clinics/a/mount.sql",
                "-- @include ../../common/varian\n-- @param clinic=a\n",
            ),
            (
                "clinics/a/Own.sql",
                "-- @depend ./Dx\nSELECT '{{clinic}}' FROM Dx;\n",
            ),
        ],
        &["clinics/a"],
    );
    let phys = node(&g, "clinics/a", "Physician");
    assert_eq!(phys.via.len(), 2, "mounted through two mount files");
    // The nested mount's setting beats the node default; the outermost
    // setting beats the nested one.
    assert_eq!(phys.params["units"].value, "g");
    assert_eq!(phys.params["clinic"].value, "a");
    assert_eq!(phys.sources[0].path.as_str(), "a/phys_g.csv");
    assert_eq!(&*phys.body, "SELECT * FROM phys_g;\n");
    // The nested mount file sits in common/varian: it sets the param for
    // that group's own nodes too.
    let dx = node(&g, "clinics/a", "Dx");
    assert_eq!(dx.params["units"].value, "g");
    assert_eq!(&*node(&g, "clinics/a", "Own").body, "SELECT 'a' FROM Dx;\n");
}

#[test]
fn inheritance_merges_directives_and_body() {
    let g = ok(
        &[
            (
                "common/_base.sql",
                "-- @key id\n-- @assert rows > 0\n-- @param limit=10\n-- @timeout 5m\nSELECT * FROM Raw LIMIT {{limit}};\n",
            ),
            ("p/Raw.csv", "id\n1\n"),
            (
                "p/A.sql",
                "-- @include common/_base.sql\n-- @depend ./Raw\n-- @param limit=20\n",
            ),
            (
                "p/B.sql",
                "-- @include ../common/_base.sql\n-- @depend ./Raw\n-- @key id, other\nSELECT 1 AS id, 2 AS other FROM Raw;\n",
            ),
        ],
        &["p"],
    );
    let a = node(&g, "p", "A");
    assert_eq!(
        &*a.body, "SELECT * FROM Raw LIMIT 20;\n",
        "inherited body, own param wins"
    );
    assert_eq!(a.body_from.as_str(), "common/_base.sql");
    assert_eq!(a.key.as_ref().unwrap().0, vec!["id"]);
    assert_eq!(a.asserts.len(), 1);
    assert_eq!(a.timeout.as_ref().unwrap().0, 300);
    assert_eq!(a.includes[0].as_str(), "common/_base.sql");
    let b = node(&g, "p", "B");
    assert_eq!(
        b.body_from.as_str(),
        "p/B.sql",
        "own body replaces the inherited one"
    );
    assert_eq!(b.key.as_ref().unwrap().0, vec!["id", "other"]);
    // `_base.sql` is not a node.
    assert!(
        g.lookup(&RepoPath::parse("common").unwrap(), "_base")
            .is_none()
    );
}

#[test]
fn defaults_by_extension_and_repo_actions() {
    let g = ok(
        &[
            ("action/julia", "# @command julia {script}\n"),
            ("p/A.py", "print(1)\n"),
            ("p/B.sh", "echo a\n"),
            ("p/C.R", "x <- 1\n"),
            ("p/D.jl", "# @include action/julia\nprintln(1)\n"),
            ("p/E.sql", "-- @include action/python\nprint(2)\n"),
            ("p/notes.txt", "just text\n"),
        ],
        &["p"],
    );
    assert_eq!(
        node(&g, "p", "A").action.action,
        Action::Command("python3 {script}".into())
    );
    assert_eq!(
        node(&g, "p", "B").action.action,
        Action::Command("bash {script}".into())
    );
    assert_eq!(
        node(&g, "p", "C").action.action,
        Action::Command("Rscript {script}".into())
    );
    let d = node(&g, "p", "D");
    assert_eq!(d.action.action, Action::Command("julia {script}".into()));
    assert_eq!(d.action.defined_in.as_str(), "action/julia");
    assert_eq!(
        node(&g, "p", "E").action.action,
        Action::Command("python3 {script}".into())
    );
    assert_eq!(g.nodes.len(), 5, "notes.txt is not a node");
}

#[test]
fn diagnostic_unknown_directive() {
    assert_eq!(
        errors(
            &[("p/A.sql", "-- @key id\n-- @depnd ./B\nSELECT 1;\n")],
            &["p"]
        ),
        vec!["p/A.sql:2: unknown directive @depnd (did you mean @depend?)"]
    );
}

#[test]
fn diagnostic_missing_dependency_suggests() {
    assert_eq!(
        errors(
            &[
                ("p/Patient.sql", "SELECT 1;\n"),
                (
                    "p/Labs.sql",
                    "-- @depend ./Patient\n-- @depend ./Patiant2\nSELECT 1;\n"
                )
            ],
            &["p"]
        ),
        vec![
            "p/Labs.sql:2: @depend ./Patiant2: no node `Patiant2` in pipeline p (did you mean `Patient`?)"
        ]
    );
    let e = errors(&[("p/A.sql", "-- @depend /nowhere/X\nSELECT 1;\n")], &["p"]);
    assert_eq!(
        e,
        vec!["p/A.sql:1: @depend /nowhere/X: no directory `nowhere` in the repository"]
    );
}

#[test]
fn diagnostic_cycle_names_the_cycle() {
    let e = errors(
        &[
            ("p/A.sql", "-- @depend ./C\nSELECT 1;\n"),
            ("p/B.sql", "-- @depend ./A\nSELECT 1;\n"),
            ("p/C.sql", "-- @depend ./B\nSELECT 1;\n"),
            ("p/D.sql", "-- @depend ./C\nSELECT 1;\n"),
        ],
        &["p"],
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("p/"), "{e:?}");
    assert!(e[0].contains(":1: dependency cycle: "), "{e:?}");
    for n in ["A", "B", "C"] {
        assert!(e[0].contains(n), "{e:?}");
    }
    assert!(
        !e[0].contains('D'),
        "D is below the cycle, not on it: {e:?}"
    );
    let self_loop = errors(&[("p/A.sql", "-- @depend ./A\nSELECT 1;\n")], &["p"]);
    assert_eq!(self_loop, vec!["p/A.sql:1: dependency cycle: A -> A"]);
}

#[test]
fn diagnostic_undefined_param() {
    let e = errors(
        &[(
            "p/A.sql",
            "-- @key id\nSELECT 1\nFROM t WHERE c = '{{ clinic }}';\n",
        )],
        &["p"],
    );
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("p/A.sql:3: undefined parameter `{{clinic}}`"),
        "{e:?}"
    );
    // In a mounted file the message names the pipeline.
    let e = errors(
        &[
            ("g/A.sql", "-- @source data://{{site}}/x.csv\nSELECT 1;\n"),
            ("p/m.sql", "-- @include g\n"),
        ],
        &["p"],
    );
    assert!(
        e[0].starts_with("g/A.sql:1: undefined parameter `{{site}}`"),
        "{e:?}"
    );
    assert!(e[0].ends_with("(in pipeline p)"), "{e:?}");
}

#[test]
fn diagnostic_include_and_mount_cycles() {
    let e = errors(
        &[
            ("p/A.sql", "-- @include common/_x.sql\n"),
            ("common/_x.sql", "-- @include common/_y.sql\nSELECT 1;\n"),
            ("common/_y.sql", "-- @key id\n-- @include common/_x.sql\n"),
        ],
        &["p"],
    );
    assert_eq!(
        e,
        vec!["common/_y.sql:2: include cycle: common/_x.sql -> common/_y.sql -> common/_x.sql"]
    );
    let e = errors(
        &[
            ("g1/m.sql", "-- @include g2\n"),
            ("g1/A.sql", "SELECT 1;\n"),
            ("g2/m.sql", "-- @include g1\n"),
            ("p/m.sql", "-- @include g1\n"),
        ],
        &["p"],
    );
    assert_eq!(e, vec!["g2/m.sql:1: mount cycle: g1 -> g2 -> g1"]);
}

#[test]
fn diagnostic_two_mounts_one_name() {
    let files = vec![
        ("g1/X.sql", "SELECT {{a}};\n"),
        ("g2/X.sql", "SELECT 2 + {{a}};\n"),
        ("p/m1.sql", "-- @include g1\n"),
        ("p/m2.sql", "-- @param a=1\n-- @include g2\n"),
    ];
    let e = errors(&files, &["p"]);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("p/m2.sql:2: node `X` comes from two mounts: g1/X.sql"),
        "{e:?}"
    );
    // An override in the pipeline settles it.
    let mut with_override = files.clone();
    with_override.push(("p/X.sql", "SELECT 3 + {{a}};\n"));
    let g = ok(&with_override, &["p"]);
    assert_eq!(node(&g, "p", "X").file.as_str(), "p/X.sql");
}

#[test]
fn diagnostic_path_escapes() {
    let mut v = build(&[
        ("p/A.sql", "-- @include ../../outside.sql\nSELECT 1;\n"),
        ("p/B.sql", "-- @source data://../../etc/passwd\nSELECT 1;\n"),
        ("p/C.sql", "-- @depend /../x/Y\nSELECT 1;\n"),
    ]);
    v.insert_unusable("p/D.sql", "symlink to /etc/shadow leaves the repository");
    let (_, d) = compile(&v, &[RepoPath::parse("p").unwrap()]);
    let e: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        e,
        vec![
            "p/A.sql:1: @include ../../outside.sql: path `../../outside.sql` leaves the repository",
            "p/B.sql:1: @source data://../../etc/passwd: path `../../etc/passwd` leaves the data root",
            "p/C.sql:1: @depend /../x/Y: path `../x` leaves the repository",
            "p/D.sql:1: symlink to /etc/shadow leaves the repository",
        ]
    );
}

#[test]
fn diagnostic_empty_sql_body() {
    assert_eq!(
        errors(&[("p/A.sql", "-- @key id\n-- only a comment\n\n")], &["p"]),
        vec!["p/A.sql:1: empty body: a SQL node needs a query that returns its table"]
    );
}

#[test]
fn diagnostics_all_found_in_one_pass() {
    let e = errors(
        &[
            ("p/A.sql", "-- @bogus\nSELECT 1;\n"),
            ("p/B.sql", "-- @depend ./Nope\nSELECT 1;\n"),
            ("p/C.sql", "SELECT {{x}};\n"),
            ("p/D.sql", "\n"),
        ],
        &["p"],
    );
    assert_eq!(e.len(), 4, "{e:#?}");
}

#[test]
fn two_inputs_with_one_name() {
    let e = errors(
        &[
            ("p/lab_map.sql", "SELECT 1;\n"),
            ("reference/lab_map.csv", "a\n1\n"),
            (
                "p/A.sql",
                "-- @depend ./lab_map\n-- @depend /reference/lab_map\nSELECT 1;\n",
            ),
        ],
        &["p"],
    );
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("p/A.sql:2: two inputs are named `lab_map`"),
        "{e:?}"
    );
}

#[test]
fn mount_file_with_node_directives_is_an_error() {
    let e = errors(
        &[
            ("g/A.sql", "SELECT 1;\n"),
            ("p/m.sql", "-- @include g\n-- @depend ./A\n"),
        ],
        &["p"],
    );
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("p/m.sql:2: @depend has no meaning in a mount file"),
        "{e:?}"
    );
}

#[test]
fn two_files_one_node_name() {
    let e = errors(
        &[("p/A.sql", "SELECT 1;\n"), ("p/A.py", "print(1)\n")],
        &["p"],
    );
    assert_eq!(
        e,
        vec!["p/A.sql:1: two files define node `A`: p/A.py and p/A.sql"]
    );
}

#[test]
fn file_names_with_control_characters_are_refused() {
    let e = errors(
        &[("p/A.sql", "SELECT 1;\n"), ("p/B\n.sql", "SELECT 1;\n")],
        &["p"],
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("p:1: file name \"B\\n.sql\""), "{e:?}");
}

/// `p/A.sql` inheriting through `lib/f1.sql` … `lib/f{depth}.sql`, the
/// last holding the body.
fn include_chain(depth: usize) -> MemVfs {
    let mut v = MemVfs::new();
    v.insert("p/A.sql", "-- @include /lib/f1.sql\n");
    for i in 1..depth {
        v.insert(
            &format!("lib/f{i}.sql"),
            format!("-- @param level{i}=x\n-- @include ./f{}.sql\n", i + 1),
        );
    }
    v.insert(&format!("lib/f{depth}.sql"), "SELECT 1 AS deepest;\n");
    v
}

/// `p` mounting `g0`, each `gI` holding node `NI` and mounting `gI+1`, down
/// to `g{depth-1}`.
fn mount_chain(depth: usize) -> MemVfs {
    let mut v = MemVfs::new();
    v.insert("p/m.sql", "-- @include /lib/g0\n-- @param who=outer\n");
    for i in 0..depth {
        v.insert(
            &format!("lib/g{i}/N{i}.sql"),
            format!("-- @param who=node\nSELECT '{{{{who}}}}' AS n{i};\n"),
        );
        if i + 1 < depth {
            v.insert(
                &format!("lib/g{i}/m.sql"),
                format!("-- @include /lib/g{}\n-- @param who=g{i}\n", i + 1),
            );
        }
    }
    v
}

fn compile_p(v: &MemVfs) -> (Graph, Vec<String>) {
    let (g, d) = compile(v, &[RepoPath::parse("p").unwrap()]);
    (g, d.iter().map(|d| d.to_string()).collect())
}

#[test]
fn include_chain_deeper_than_the_limit_is_refused_quickly() {
    let v = include_chain(7000);
    let start = std::time::Instant::now();
    let (_, errs) = compile_p(&v);
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    // The chain is cut, so A also has no body: a second, expected problem.
    assert_eq!(errs.len(), 2, "{errs:#?}");
    // p/A.sql is level 0, so lib/f64.sql is the 64th include and the
    // include on its line 2 the 65th.
    assert!(
        errs[0].starts_with("lib/f64.sql:2: include chain deeper than 64 files (p/A.sql -> lib/f1.sql -> … 62 more … -> lib/f64.sql -> lib/f65.sql)"),
        "{errs:?}"
    );
}

#[test]
fn include_chain_at_the_limit_resolves() {
    let v = include_chain(64);
    let (g, errs) = compile_p(&v);
    assert!(errs.is_empty(), "{errs:#?}");
    let a = node(&g, "p", "A");
    assert_eq!(&*a.body, "SELECT 1 AS deepest;\n");
    assert_eq!(a.includes.len(), 64);
    assert_eq!(a.params.len(), 63);
}

#[test]
fn mount_chain_deeper_than_the_limit_is_refused_quickly() {
    let v = mount_chain(2000);
    let start = std::time::Instant::now();
    let (_, errs) = compile_p(&v);
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("lib/g63/m.sql:1: mount chain deeper than 64 directories (p -> lib/g0 -> … 62 more … -> lib/g63 -> lib/g64)"),
        "{errs:?}"
    );
}

#[test]
fn mount_chain_at_the_limit_resolves_with_params_and_via() {
    let v = mount_chain(64);
    let (g, errs) = compile_p(&v);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(g.nodes.len(), 64);
    let deepest = node(&g, "p", "N63");
    assert_eq!(deepest.via.len(), 64);
    assert_eq!(deepest.via[0].as_str(), "p/m.sql");
    assert_eq!(deepest.via[63].as_str(), "lib/g62/m.sql");
    // The outermost setting wins over every level and the node default.
    assert_eq!(&*deepest.body, "SELECT 'outer' AS n63;\n");
    assert_eq!(deepest.params["who"].origin.file.as_str(), "p/m.sql");
}

#[test]
fn silent_mistake_directive_below_the_body() {
    let e = errors(
        &[(
            "p/Labs.sql",
            "-- @key id\nSELECT 1 AS id;\n-- @assert rows > 100\n",
        )],
        &["p"],
    );
    assert_eq!(
        e,
        [
            "p/Labs.sql:3: @assert below the body is not read: directives go in the leading comment block; move this line above line 2"
        ]
    );
}

#[test]
fn silent_mistake_unknown_mount_parameter() {
    let files = [
        (
            "common/g/Visits.sql",
            "-- @param min_visits=1\nSELECT {{min_visits}} AS n;\n",
        ),
        (
            "clinics/a/g.sql",
            "-- @include common/g\n-- @param min_visit=3\n",
        ),
        (
            "clinics/b/g.sql",
            "-- @include common/g\n-- @param min_visits=3\n-- @param colour=red\n",
        ),
    ];
    let e = errors(&files, &["clinics/a", "clinics/b"]);
    assert_eq!(
        e,
        [
            "clinics/a/g.sql:2: @param min_visit is set here, but no node of clinics/a declares or uses `min_visit` (did you mean `min_visits`?)",
            "clinics/b/g.sql:3: @param colour is set here, but no node of clinics/b declares or uses `colour`; declare it in a node with `@param colour=DEFAULT`, use it as `{{colour}}`, or remove this line",
        ]
    );
    // A setting used only in an `@assert sql:` is used.
    let g = ok(
        &[
            (
                "common/g/T.sql",
                "-- @assert sql: SELECT * FROM T WHERE n < {{lo}}\nSELECT 1 AS n;\n",
            ),
            ("clinics/a/g.sql", "-- @include common/g\n-- @param lo=5\n"),
        ],
        &["clinics/a"],
    );
    let t = node(&g, "clinics/a", "T");
    assert_eq!(
        t.asserts[0].0,
        super::directive::Assert::Sql("SELECT * FROM T WHERE n < 5".into())
    );
}

#[test]
fn silent_mistake_template_in_assert_sql() {
    let e = errors(
        &[(
            "p/T.sql",
            "-- @assert sql: SELECT * FROM T WHERE n > {{max_n}}\nSELECT 1 AS n;\n",
        )],
        &["p"],
    );
    assert_eq!(
        e,
        [
            "p/T.sql:1: undefined parameter `{{max_n}}`: declare it with `@param max_n=...` in the node or set it in the pipeline's mount file"
        ]
    );
}

#[test]
fn silent_mistake_node_name_that_cannot_be_referenced() {
    let e = errors(
        &[
            ("p/Lab Results.sql", "SELECT 1;\n"),
            ("p/lab-map.csv", "a\n1\n"),
            ("p/Ok_1.sql", "SELECT 1;\n"),
        ],
        &["p"],
    );
    assert_eq!(
        e,
        [
            "p/Lab Results.sql:1: node name `Lab Results` (the file name without its extension) must be letters, digits and `_`: `@depend ./Lab Results` could not name it; rename the file, e.g. to p/Lab_Results.sql",
            "p/lab-map.csv:1: node name `lab-map` (the file name without its extension) must be letters, digits and `_`: `@depend ./lab-map` could not name it; rename the file, e.g. to p/lab_map.csv",
        ]
    );
}

#[test]
fn body_lines_follow_the_file() {
    let g = ok(
        &[(
            "p/T.sql",
            "-- @key n\n\n-- @param k=1\nSELECT\n  {{k}} AS n;\n",
        )],
        &["p"],
    );
    let t = node(&g, "p", "T");
    assert_eq!(&*t.body, "SELECT\n  1 AS n;\n");
    assert_eq!(*t.body_lines, [4, 5]);
    assert_eq!(t.body_file_line(1), 5);
}

/// A big value is freed on another thread, a small one where it is
/// dropped; either way it is freed (the thread is not a leak).
#[test]
fn big_values_are_freed_aside() {
    use std::sync::mpsc;
    struct Tell(mpsc::Sender<std::thread::ThreadId>);
    impl Drop for Tell {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }
    let here = std::thread::current().id();
    let (tx, rx) = mpsc::channel();
    super::resolve::drop_aside(Tell(tx.clone()), 10);
    assert_eq!(rx.recv().unwrap(), here);
    super::resolve::drop_aside(Tell(tx), super::resolve::DROP_ASIDE_NODES);
    let on = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("freed");
    assert_ne!(on, here);
}

/// A path's clones share one allocation: a graph names each file from
/// many origins and dependencies.
#[test]
fn path_clones_share_their_text() {
    let p = RepoPath::parse("clinics/a/Patient.sql").unwrap();
    let q = p.clone();
    assert_eq!(p.as_str().as_ptr(), q.as_str().as_ptr());
    assert_eq!(RepoPath::default(), RepoPath::root());
    assert_eq!(RepoPath::default().to_string(), ".");
}

/// A pipeline's own node file is read again after its node was added (its
/// template is not kept): by a node of its pipeline that includes it, by
/// another pipeline mounting its directory, and with a syntax error that
/// is still said once.
#[test]
fn an_own_node_file_read_again_resolves_as_the_first_time() {
    let files = [
        (
            "clinics/a/Base.sql",
            "-- @key id\n-- @param units=g\nSELECT 1 AS id, '{{units}}' AS u;\n",
        ),
        (
            "clinics/a/More.sql",
            "-- @include ./Base.sql\n-- @param units=mg\n",
        ),
        ("clinics/b/a.sql", "-- @include ../a\n-- @param units=kg\n"),
    ];
    let g = ok(&files, &["clinics/a", "clinics/b"]);
    assert_eq!(
        &*node(&g, "clinics/a", "Base").body,
        "SELECT 1 AS id, 'g' AS u;\n"
    );
    assert_eq!(
        &*node(&g, "clinics/a", "More").body,
        "SELECT 1 AS id, 'mg' AS u;\n"
    );
    let mounted = node(&g, "clinics/b", "Base");
    assert_eq!(&*mounted.body, "SELECT 1 AS id, 'kg' AS u;\n");
    assert_eq!(
        mounted.key.as_ref().map(|(k, _)| k.clone()),
        Some(vec!["id".to_string()])
    );
    assert_eq!(
        &*node(&g, "clinics/b", "More").body,
        "SELECT 1 AS id, 'kg' AS u;\n"
    );

    let mut bad = files;
    bad[0].1 = "-- @key id\n-- @bogus x\nSELECT 1 AS id;\n";
    let errs = errors(&bad, &["clinics/a", "clinics/b"]);
    assert_eq!(
        errs.iter()
            .filter(|e| e.starts_with("clinics/a/Base.sql:2:"))
            .count(),
        1,
        "{errs:#?}"
    );
}
