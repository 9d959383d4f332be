//! One commit, one truth: a corpus of crafted trees, each committed with
//! real git, cloned into a real checkout, and read both ways — from the
//! checkout and from git objects (`--at HEAD`). Both must give the same
//! nodes and definition hashes, or the same refusal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Repo, Run, sluice_in};

const TOML: &str = "[project]\nproduction_branch = \"main\"\npipelines = [\"clinics/*\"]\n";

/// A repository with `pipelines = ["clinics/*"]` and no data root.
fn repo() -> Repo {
    let r = Repo::empty();
    r.file("sluice.toml", TOML);
    r
}

fn git(dir: &Path, args: &[&str]) -> String {
    crate::util::git_in(dir, args)
}

/// Writes a symlink `rel -> target` in `r`.
fn link(r: &Repo, rel: &str, target: &str) {
    let p = r.path().join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

/// A fresh clone of `src` (a real checkout, with git's attribute
/// conversions applied) and `sluice plan --json` on it both ways.
struct Both {
    _dir: tempfile::TempDir,
    checkout: PathBuf,
    disk: Run,
    objects: Run,
    disk_time: Duration,
    objects_time: Duration,
}

fn both(src: &Repo) -> Both {
    both_in(src, "")
}

/// As [`both`], with sluice's root at `sub` inside the clone.
fn both_in(src: &Repo, sub: &str) -> Both {
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("checkout");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            src.path().to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    let checkout = clone.join(sub);
    let repo = checkout.to_str().unwrap();
    let start = Instant::now();
    let disk = sluice_in(&checkout, &["--repo", repo, "plan", "--json"]);
    let disk_time = start.elapsed();
    let start = Instant::now();
    let objects = sluice_in(
        &checkout,
        &["--repo", repo, "--at", "HEAD", "plan", "--json"],
    );
    let objects_time = start.elapsed();
    Both {
        _dir: dir,
        checkout,
        disk,
        objects,
        disk_time,
        objects_time,
    }
}

impl Both {
    /// Both modes printed the same plan (nodes and definition hashes) and
    /// the same problems.
    #[track_caller]
    fn agree(&self) -> &Self {
        assert_eq!(
            (self.disk.code, &self.disk.stdout, &self.disk.stderr),
            (
                self.objects.code,
                &self.objects.stdout,
                &self.objects.stderr
            ),
            "the checkout (left) and git objects (right) disagree"
        );
        self
    }

    /// Both succeeded with these `pipeline/node` names.
    #[track_caller]
    fn nodes(&self, want: &[&str]) -> &Self {
        self.agree();
        self.disk.success();
        let mut names = Vec::new();
        for plan in self.disk.json()["plans"].as_array().unwrap() {
            for n in plan["nodes"].as_array().unwrap() {
                names.push(format!(
                    "{}/{}",
                    plan["pipeline"].as_str().unwrap(),
                    n["name"].as_str().unwrap()
                ));
            }
        }
        names.sort();
        assert_eq!(names, want);
        self
    }

    /// Both refused, with this line among the problems.
    #[track_caller]
    fn refuse(&self, line: &str) -> &Self {
        self.agree();
        assert_ne!(self.disk.code, 0, "{}", self.disk.stdout);
        self.disk.stderr_has(line);
        self
    }

    fn show(&self, node: &str, at: bool) -> String {
        let repo = self.checkout.to_str().unwrap();
        let mut args = vec!["--repo", repo];
        if at {
            args.extend(["--at", "HEAD"]);
        }
        args.extend(["show", node]);
        let r = sluice_in(&self.checkout, &args);
        r.success();
        r.stdout
    }
}

#[test]
fn symlinks_through_dot_dot_follow_the_real_directory() {
    let r = repo();
    r.file("deep/a/_target.sql", "SELECT 'deep' AS w;\n")
        .file("deep/a/b/keep", "")
        .file("clinics/clinic_b/_target.sql", "SELECT 'lexical' AS w;\n");
    link(&r, "clinics/clinic_b/_sub", "../../deep/a/b");
    link(&r, "clinics/clinic_b/Node.sql", "_sub/../_target.sql");
    r.commit_all("links");
    let b = both(&r);
    b.nodes(&["clinics/clinic_b/Node"]);
    for at in [false, true] {
        let shown = b.show("clinics/clinic_b/Node", at);
        assert!(shown.contains("SELECT 'deep' AS w;"), "at={at}: {shown}");
    }
}

#[test]
fn a_link_target_with_a_trailing_slash_on_a_file_is_refused() {
    let r = repo();
    r.file("clinics/a/Labs.sql", "SELECT 1 AS x;\n");
    link(&r, "clinics/a/Node.sql", "Labs.sql/");
    r.commit_all("slash");
    both(&r).refuse(
        "clinics/a/Node.sql:1: symlink to Labs.sql/ ends in `/` but names a file, which a checkout cannot follow",
    );
}

#[test]
fn directory_self_links_are_not_followed_by_globs() {
    let r = repo();
    r.file(
        "sluice.toml",
        "[project]\nproduction_branch = \"main\"\npipelines = [\"clinics/**\"]\n",
    )
    .file("clinics/a/A.sql", "SELECT 1 AS x;\n");
    link(&r, "clinics/l1", ".");
    link(&r, "clinics/a/l2", "..");
    r.commit_all("loops");
    let b = both(&r);
    b.nodes(&["clinics/a/A"]);
    for t in [b.disk_time, b.objects_time] {
        assert!(t < Duration::from_secs(1), "took {t:?}");
    }
}

#[test]
fn gitlinks_are_refused_alike_as_pipeline_node_and_mount() {
    let r = repo();
    r.file("clinics/a/A.sql", "SELECT 1 AS x;\n")
        .file("clinics/a/m.sql", "-- @include /vendor/lib\n");
    let sha = r.commit_all("first");
    for path in ["clinics/sub", "clinics/a/N.sql", "vendor/lib"] {
        r.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{sha},{path}"),
        ]);
    }
    r.git(&["commit", "-q", "-m", "gitlinks"]);
    let b = both(&r);
    assert!(
        b.checkout.join("clinics/sub").is_dir(),
        "an empty directory on disk"
    );
    let why = "a git submodule (gitlink): its files are not part of this repository's commit";
    b.refuse(&format!(
        "sluice.toml:1: `clinics/sub` (matched by `pipelines`) cannot be used: {why}"
    ))
    .refuse(&format!("clinics/a/N.sql:1: {why}"))
    .refuse(&format!("clinics/a/m.sql:1: @include /vendor/lib: {why}"));
}

#[test]
fn working_tree_encoding_is_refused_naming_the_attributes_line() {
    let r = repo();
    r.file(
        ".gitattributes",
        "# encodings\nclinics/a/X.sql working-tree-encoding=UTF-16LE\nclinics/a/Y.sql working-tree-encoding=UTF-16LE\n",
    )
    .file("clinics/a/Z.sql", "SELECT 3 AS z;\n");
    // git wants the working-tree encoding in the work tree it adds from.
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    std::fs::write(
        r.path().join("clinics/a/X.sql"),
        utf16("-- @depend ./Y\nSELECT 1 AS x;\n"),
    )
    .unwrap();
    std::fs::write(r.path().join("clinics/a/Y.sql"), utf16("SELECT 2 AS y;\n")).unwrap();
    r.commit_all("utf16");
    let blob = r.git(&["cat-file", "-p", "HEAD:clinics/a/Y.sql"]);
    assert_eq!(blob, "SELECT 2 AS y;", "the commit holds UTF-8");
    let b = both(&r);
    let disk = std::fs::read(b.checkout.join("clinics/a/X.sql")).unwrap();
    assert_eq!(&disk[..2], b"-\0", "the checkout holds UTF-16");
    b.refuse("clinics/a/X.sql:1: cannot read file: .gitattributes:2 (`clinics/a/X.sql working-tree-encoding=UTF-16LE`) sets `working-tree-encoding`")
        .refuse("clinics/a/Y.sql:1: cannot read file: .gitattributes:3");
}

#[test]
fn ident_is_refused_naming_the_attributes_line() {
    let r = repo();
    r.file("clinics/.gitattributes", "*.sql ident\n")
        .file("clinics/a/A.sql", "-- $Id$\nSELECT 1 AS x;\n");
    r.commit_all("ident");
    both(&r).refuse(
        "clinics/a/A.sql:1: cannot read file: clinics/.gitattributes:1 (`*.sql ident`) sets `ident`",
    );
}

#[test]
fn lfs_files_and_lfs_pointers_get_their_own_message() {
    let pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n";
    let r = repo();
    r.file(
        ".gitattributes",
        "clinics/a/Big.sql filter=lfs diff=lfs merge=lfs -text\n",
    )
    .file("clinics/a/Big.sql", pointer)
    .file("clinics/a/Ptr.sql", pointer)
    .file("sluice.toml", TOML);
    r.commit_all("lfs");
    both(&r)
        .refuse("clinics/a/Big.sql:1: cannot read file: .gitattributes:1 (`clinics/a/Big.sql filter=lfs diff=lfs merge=lfs -text`) stores this file in Git LFS")
        .refuse("clinics/a/Ptr.sql:1: cannot read file: this file is a Git LFS pointer, not the file's content");
}

#[test]
fn crlf_on_checkout_hashes_like_lf() {
    let r = repo();
    r.file(".gitattributes", "*.sql text eol=crlf\n")
        .file("clinics/a/A.sql", "-- @depend ./B\nSELECT * FROM B;\n")
        .file("clinics/a/B.sql", "SELECT 1 AS x;\n");
    r.commit_all("crlf");
    let b = both(&r);
    let disk = std::fs::read_to_string(b.checkout.join("clinics/a/B.sql")).unwrap();
    assert!(disk.contains("\r\n"), "the checkout has CRLF");
    b.nodes(&["clinics/a/A", "clinics/a/B"]);
}

#[test]
fn names_one_on_macos_and_windows_are_refused() {
    let r = repo();
    r.file("clinics/a/Patient.sql", "SELECT 1 AS x;\n")
        .file("clinics/a/patient.sql", "SELECT 2 AS x;\n")
        .file("clinics/b/Caf\u{e9}.sql", "SELECT 3 AS x;\n")
        .file("clinics/b/Cafe\u{301}.sql", "SELECT 4 AS x;\n")
        .file("clinics/b/Other.sql", "SELECT 5 AS x;\n");
    r.commit_all("case");
    both(&r)
        .refuse("clinics/a/Patient.sql:1: `Patient.sql` and `patient.sql` are one name on macOS and Windows")
        .refuse("clinics/a/patient.sql:1: `Patient.sql` and `patient.sql` are one name")
        .refuse("clinics/b/Caf\u{e9}.sql:1: ");
}

/// Writes a tree object from raw entries (mode, name, id) with git's own
/// `hash-object --literally`, which, unlike `mktree`, lets any name in.
fn raw_tree(dir: &Path, entries: &[(&str, &[u8], &str)]) -> String {
    let mut bytes = Vec::new();
    for (mode, name, id) in entries {
        bytes.extend_from_slice(mode.as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(name);
        bytes.push(0);
        for i in (0..40).step_by(2) {
            bytes.push(u8::from_str_radix(&id[i..i + 2], 16).unwrap());
        }
    }
    let mut child = Command::new("git")
        .args(["hash-object", "-t", "tree", "-w", "--literally", "--stdin"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn tree_entries_no_checkout_can_have_are_refused() {
    let r = repo();
    r.commit_all("empty");
    let dir = r.path();
    let blob = |text: &str| {
        let f = dir.join(".blob");
        std::fs::write(&f, text).unwrap();
        let id = git(dir, &["hash-object", "-w", ".blob"]);
        std::fs::remove_file(&f).unwrap();
        id
    };
    let evil = blob("SELECT 'evil' AS e;\n");
    let a = blob("-- @depend /.git/Evil\nSELECT * FROM Evil;\n");
    let toml = blob(&TOML.replace("clinics/*", "clinics/*\", \".git"));
    let dot_git = raw_tree(dir, &[("100644", b"Evil.sql", &evil)]);
    let clinic = raw_tree(
        dir,
        &[("100644", b"A.sql", &a), ("100644", b"x/Y.sql", &evil)],
    );
    let clinics = raw_tree(dir, &[("40000", b"a", &clinic)]);
    let top = raw_tree(
        dir,
        &[
            ("40000", b".git", &dot_git),
            ("40000", b"clinics", &clinics),
            ("100644", b"sluice.toml", &toml),
        ],
    );
    let commit = git(dir, &["commit-tree", &top, "-m", "hand-built"]);
    let run = r.sluice(&["--at", &commit, "plan", "--json"]);
    run.failure()
        .stderr_has(
            "the commit's tree has an entry named \".git\", which git never writes into a checkout",
        )
        .stderr_has("clinics/a/x/Y.sql:1: the commit's tree has an entry named \"x/Y.sql\"");
    assert!(!run.stdout.contains("Evil"), "{}", run.stdout);
}

#[test]
fn a_bare_repository_and_a_shallow_clone_read_with_clear_answers() {
    let r = repo();
    r.file("clinics/a/A.sql", "SELECT 1 AS x;\n");
    r.commit_all("one");
    r.file("clinics/a/B.sql", "SELECT 2 AS x;\n");
    r.commit_all("two");
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("p.git");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            r.path().to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    sluice_in(&bare, &["--at", "HEAD", "check"])
        .success()
        .stdout_has("2 nodes");
    sluice_in(
        dir.path(),
        &["--repo", bare.to_str().unwrap(), "--at", "main~1", "check"],
    )
    .success()
    .stdout_has("1 node");
    let shallow = dir.path().join("shallow");
    let url = format!("file://{}", r.path().display());
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            &url,
            shallow.to_str().unwrap(),
        ],
    );
    sluice_in(&shallow, &["--at", "HEAD~1", "check"]).stderr_has("this clone is shallow");
}

#[test]
fn links_that_loop_dangle_or_leave_are_refused_alike() {
    let r = repo();
    r.file("clinics/a/A.sql", "SELECT 1 AS x;\n")
        .file("clinics/a/I.sql", "-- @include /lib/out/base.sql\n");
    link(&r, "clinics/a/Loop.sql", "Loop2.sql");
    link(&r, "clinics/a/Loop2.sql", "Loop.sql");
    link(&r, "clinics/a/Gone.sql", "Nowhere.sql");
    link(&r, "clinics/a/Etc.sql", "/etc/hostname");
    link(&r, "lib/out", "../..");
    r.commit_all("bad links");
    both(&r)
        .refuse("clinics/a/Loop.sql:1: symlink to Loop2.sql loops (too many levels of symlinks)")
        .refuse("clinics/a/Gone.sql:1: dangling symlink to Nowhere.sql")
        .refuse("clinics/a/Etc.sql:1: symlink to /etc/hostname leaves the repository")
        .refuse("clinics/a/I.sql:1: @include /lib/out/base.sql: `lib/out` is a symlink to ../.., which leaves the repository");
}

#[test]
fn a_link_that_climbs_above_the_root_is_refused_even_if_it_comes_back() {
    let r = Repo::empty();
    r.file("proj/sluice.toml", TOML)
        .file("proj/lib/s.sql", "SELECT 1 AS x;\n")
        .file("proj/clinics/a/A.sql", "SELECT 1 AS x;\n")
        .file("proj/clinics/a/I.sql", "-- @include /lib2/x/base.sql\n")
        .file("other/keep", "");
    // Out of `proj` through the clone's own directory and back in: on disk
    // it lands inside, but it depends on where `proj` sits.
    link(&r, "proj/clinics/a/Back.sql", "../../../proj/lib/s.sql");
    link(&r, "proj/clinics/a/Out.sql", "../../../nothing.sql");
    link(&r, "proj/lib2", "../other");
    r.commit_all("climbs");
    both_in(&r, "proj")
        .refuse("clinics/a/Back.sql:1: symlink to ../../../proj/lib/s.sql leaves the repository")
        .refuse("clinics/a/Out.sql:1: symlink to ../../../nothing.sql leaves the repository")
        .refuse("clinics/a/I.sql:1: @include /lib2/x/base.sql: `lib2` is a symlink to ../other, which leaves the repository");
}
