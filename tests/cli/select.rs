//! `--select` / `--exclude` on `plan`, `ls` and `run`, end to end: the
//! example, `state:modified` against a promoted production, a selected
//! run, and every operator on a generated repository compared with a
//! brute-force walk of its graph.

use std::collections::BTreeSet;

use crate::util::{Repo, Run};

/// `pipeline:name` of each node `ls --json` or `plan --json` printed.
fn listed(run: &Run) -> BTreeSet<String> {
    let v = run.json();
    if let Some(nodes) = v["nodes"].as_array() {
        return nodes
            .iter()
            .map(|n| {
                format!(
                    "{}:{}",
                    n["pipeline"].as_str().unwrap(),
                    n["name"].as_str().unwrap()
                )
            })
            .collect();
    }
    let mut out = BTreeSet::new();
    for p in v["plans"].as_array().expect("plans") {
        for n in p["nodes"].as_array().expect("nodes") {
            out.insert(format!(
                "{}:{}",
                p["pipeline"].as_str().unwrap(),
                n["name"].as_str().unwrap()
            ));
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn plan_select_lists_exactly_the_selected_nodes() {
    let r = Repo::example();
    let plan = r.sluice(&["plan", "--select", "clinics/clinic_a/Albumin+", "--json"]);
    plan.success();
    assert_eq!(
        listed(&plan),
        set(&[
            "clinics/clinic_a:Albumin",
            "clinics/clinic_a:AlbuminTrend",
            "clinics/clinic_a:PatientSummary",
        ])
    );
    // A glob over pipelines, one level up, and an exclusion.
    let ls = r.sluice(&[
        "ls",
        "-s",
        "1+clinics/*/Albumin",
        "--exclude",
        "clinics/clinic_b",
        "--json",
    ]);
    ls.success();
    assert_eq!(
        listed(&ls),
        set(&["clinics/clinic_a:Albumin", "clinics/clinic_a:Labs"])
    );
    // The text form is what show takes, inputs from elsewhere included.
    let ls = r.sluice(&["ls", "clinics/clinic_b", "-s", "+Labs"]);
    ls.success();
    assert_eq!(
        ls.stdout.lines().collect::<BTreeSet<_>>(),
        [
            "clinics/clinic_b/Patient",
            "clinics/clinic_b/Labs",
            "clinics/clinic_b//reference/lab_map"
        ]
        .into_iter()
        .collect()
    );
    r.sluice(&["show", "clinics/clinic_b//reference/lab_map"])
        .success();
}

#[test]
fn a_selector_that_matches_nothing_is_an_error_with_the_nearest_name() {
    let r = Repo::example();
    let run = r.sluice(&["plan", "-s", "clinics/clinic_a/Albumn+"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    run.stderr_has("selector `clinics/clinic_a/Albumn+` matches no node (did you mean clinics/clinic_a/Albumin?)");
    let run = r.sluice(&["ls", "--exclude", "tag:nightly"]);
    assert_eq!(run.code, 2);
    run.stderr_has("unknown method `tag:`");
}

/// T <- U <- V, T <- W in clinics/a; clinics/b has its own T.
fn small_repo() -> Repo {
    let r = Repo::new();
    r.file("clinics/a/T.sql", "SELECT 1 AS x;\n")
        .file("clinics/a/U.sql", "-- @depend ./T\nSELECT x FROM T;\n")
        .file("clinics/a/V.sql", "-- @depend ./U\nSELECT x FROM U;\n")
        .file(
            "clinics/a/W.sql",
            "-- @depend ./T\nSELECT x * 2 AS x FROM T;\n",
        )
        .file("clinics/b/T.sql", "SELECT 2 AS x;\n");
    r
}

#[test]
fn state_modified_is_against_production() {
    let r = small_repo();
    r.commit_all("first");
    r.sluice(&["run", "--promote"]).success();
    let ls = r.sluice(&["ls", "-s", "state:modified", "--json"]);
    ls.success();
    assert_eq!(listed(&ls), set(&[]), "nothing changed yet");

    r.file(
        "clinics/a/U.sql",
        "-- @depend ./T\nSELECT x + 1 AS x FROM T;\n",
    );
    r.file("clinics/b/New.sql", "SELECT 3 AS x;\n");
    let ls = r.sluice(&["ls", "-s", "state:modified", "--json"]);
    ls.success();
    assert_eq!(listed(&ls), set(&["clinics/a:U", "clinics/b:New"]));
    let ls = r.sluice(&["ls", "-s", "state:modified+", "--json"]);
    assert_eq!(
        listed(&ls),
        set(&["clinics/a:U", "clinics/a:V", "clinics/b:New"])
    );
    let plan = r.sluice(&[
        "plan",
        "-s",
        "state:modified+",
        "--exclude",
        "New",
        "--json",
    ]);
    assert_eq!(listed(&plan), set(&["clinics/a:U", "clinics/a:V"]));
    let json = plan.json();
    let changes: Vec<&str> = json["plans"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["modified", "affected"]);
}

#[test]
fn a_selected_run_computes_missing_ancestors_and_reports_them() {
    let r = small_repo();
    // Nothing cached: V needs U and T, which are computed and reported;
    // W and clinic b are not run.
    let run = r.sluice(&["run", "-s", "V", "--json"]);
    run.success();
    let v = run.json();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{v}");
    let names: Vec<&str> = runs[0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["T", "U", "V"]);

    // Now U and T are cached: only the selection is listed.
    let run = r.sluice(&["run", "-s", "V W", "--json"]);
    let names: BTreeSet<String> = run.json()["runs"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            format!(
                "{}={}",
                n["name"].as_str().unwrap(),
                n["status"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, set(&["V=cached", "W=computed"]));
    // The last run holds U's table from the run before, though it ran
    // only V and W: `cat` and `diff` still see it.
    r.sluice(&["cat", "clinics/a/U"])
        .success()
        .stdout_has("x\n1\n");

    // A selection is never promoted.
    r.commit_all("first");
    let run = r.sluice(&["run", "-s", "V", "--promote"]);
    assert_eq!(run.code, 2);
    run.stderr_has("drop --select/--exclude to promote");
}

/// A small deterministic generator (xorshift), so the repository differs
/// per seed without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn every_operator_on_a_generated_repository_matches_a_brute_force_walk() {
    const N: usize = 14;
    let mut rng = Rng(0x5eed_1234_abcd);
    let r = Repo::new();
    // Node i lives in clinic a or b and depends on up to three earlier
    // nodes, across clinics as `/clinics/x/Ni`.
    let mut home = Vec::new();
    let mut deps: Vec<Vec<usize>> = Vec::new();
    for i in 0..N {
        let c = if rng.next(2) == 0 { "a" } else { "b" };
        let mut d: Vec<usize> = (0..3).filter(|_| i > 0).map(|_| rng.next(i)).collect();
        d.sort_unstable();
        d.dedup();
        let mut text: String = d
            .iter()
            .map(|&j| format!("-- @depend /clinics/{}/N{j}\n", home[j]))
            .collect();
        text.push_str("SELECT 1 AS x;\n");
        r.file(&format!("clinics/{c}/N{i}.sql"), &text);
        home.push(c);
        deps.push(d);
    }
    // reach[i][j]: the shortest path length from i down its dependencies to j.
    let mut reach = vec![vec![None::<usize>; N]; N];
    for (i, row) in reach.iter_mut().enumerate() {
        let mut frontier = vec![i];
        let mut level = 0;
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for f in frontier {
                if row[f].is_none() {
                    row[f] = Some(level);
                    next.extend(deps[f].iter().copied());
                }
            }
            frontier = next;
            level += 1;
        }
    }
    // A pipeline runs its own nodes and everything they depend on.
    let runs = |c: &str, j: usize| (0..N).any(|o| home[o] == c && reach[o][j].is_some());
    let label = |c: &str, j: usize| {
        if home[j] == c {
            format!("clinics/{c}:N{j}")
        } else {
            format!("clinics/{c}:/clinics/{}/N{j}", home[j])
        }
    };
    for t in [0, 3, 7, N / 2 + 1, N - 1] {
        let addr = format!("clinics/{}/N{t}", home[t]);
        for (selector, up, down) in [
            (addr.clone(), Some(0), Some(0)),
            (format!("+{addr}"), None, Some(0)),
            (format!("1+{addr}"), Some(1), Some(0)),
            (format!("{addr}+"), Some(0), None),
            (format!("{addr}+1"), Some(0), Some(1)),
            (format!("2+{addr}+2"), Some(2), Some(2)),
        ] {
            let within = |limit: Option<usize>, d: Option<usize>| {
                d.is_some_and(|d| limit.is_none_or(|l| d <= l))
            };
            let mut expected = BTreeSet::new();
            for c in ["a", "b"] {
                if !runs(c, t) {
                    continue;
                }
                for j in (0..N).filter(|&j| runs(c, j)) {
                    if within(up, reach[t][j]) || within(down, reach[j][t]) {
                        expected.insert(label(c, j));
                    }
                }
            }
            let ls = r.sluice(&["ls", "-s", &selector, "--json"]);
            ls.success();
            assert_eq!(listed(&ls), expected, "{selector}");
        }
    }
}
