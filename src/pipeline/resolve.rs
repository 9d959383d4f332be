//! The resolver: turns a repository tree (through the [`Vfs`]) into a
//! [`Graph`] and every diagnostic found on the way. File includes
//! (inheritance), directory includes (mounts), overrides, parameters and
//! templates are applied here. Pure: all reading goes through the VFS.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::diag::{Diagnostic, Diagnostics};
use std::cell::RefCell;

pub mod incremental;
use super::directive::{self, Assert, DependRef, DirectiveKind, ParsedFile};
use super::graph::{
    Action, Dep, Graph, Node, NodeId, Origin, ParamValue, ResolvedAction, SourceRef,
};
use super::path::RepoPath;
use super::template;
use super::vfs::{EntryKind, Layered, Vfs, VfsError};

/// How deep `@include` chains of files and chains of mounts may go. A
/// chain is followed on every `check`, `plan` and push (the pre-receive
/// hook), so its cost must stay bounded whatever a branch commits; past
/// this depth the chain is refused with a diagnostic at the `@include`
/// that goes one level too far.
pub const MAX_INCLUDE_DEPTH: usize = 64;

/// Resolves the given pipeline directories (and every directory they reach
/// through `@depend /dir/NAME`) into a graph.
pub fn compile(vfs: &dyn Vfs, pipelines: &[RepoPath]) -> (Graph, Vec<Diagnostic>) {
    let mut c = Compiler::new(vfs);
    let mut queue: VecDeque<RepoPath> = pipelines.iter().cloned().collect();
    let mut visited: HashSet<RepoPath> = HashSet::new();
    while let Some(dir) = queue.pop_front() {
        if !visited.insert(dir.clone()) {
            continue;
        }
        let Some(ns) = c.namespace(&dir) else {
            continue;
        };
        for entry in ns.entries.values() {
            c.add_node(&dir, entry, &mut queue);
        }
    }
    c.link();
    c.unused_settings();
    let mut pipelines = pipelines.to_vec();
    pipelines.sort();
    pipelines.dedup();
    c.graph.pipelines = pipelines;
    let Compiler {
        graph,
        diags,
        parsed,
        templates,
        namespaces,
        ..
    } = c;
    drop_aside((parsed, templates, namespaces), graph.nodes.len());
    (graph, diags.set.into_vec())
}

/// Past this many nodes, big structures are freed on another thread.
pub(crate) const DROP_ASIDE_NODES: usize = 4096;

/// Set by [`free_nothing_big`].
static FREE_NOTHING_BIG: AtomicBool = AtomicBool::new(false);

/// For a process that exits when its command is done (every command but
/// `serve`): what [`drop_aside`] is given is never freed. Freeing the
/// caches of 50,000 nodes costs a quarter of a plan, on another thread it
/// still contends for the allocator with the hashing that follows, and
/// the process's exit returns the memory anyway.
pub fn free_nothing_big() {
    FREE_NOTHING_BIG.store(true, Ordering::Relaxed);
}

/// Frees `value` on a thread of its own when it is big (`size` past
/// [`DROP_ASIDE_NODES`]): freeing the caches of 50,000 nodes takes as long
/// as building some of them, and nobody waits for it. A command that exits
/// first never frees them at all; the daemon's thread finishes on its own.
/// After [`free_nothing_big`], a big value is not freed.
pub(crate) fn drop_aside<T: Send + 'static>(value: T, size: usize) {
    if size < DROP_ASIDE_NODES {
        return;
    }
    if FREE_NOTHING_BIG.load(Ordering::Relaxed) {
        std::mem::forget(value);
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("sluice-free".into())
        .spawn(move || drop(value));
    // Without a thread, it is freed here, as before.
    drop(spawned);
}

/// The extensions that make a file a node without any directive.
fn default_action_path(ext: Option<&str>) -> Option<&'static str> {
    match ext {
        Some("sql") => Some("action/sql/sqlite"),
        Some("py") => Some("action/python"),
        Some("sh") => Some("action/bash"),
        Some("R") | Some("r") => Some("action/r"),
        _ => None,
    }
}

/// A file after its `@include`d parents are merged in, before parameters.
#[derive(Debug, Clone, Default)]
struct Template {
    includes: Vec<RepoPath>,
    action: Option<(Action, RepoPath)>,
    body: Option<Body>,
    depends: Vec<(DependRef, Origin)>,
    params: BTreeMap<String, ParamValue>,
    sources: Vec<(String, Origin)>,
    key: Option<(Vec<String>, Origin)>,
    asserts: Vec<(Assert, Origin)>,
    timeout: Option<(u64, Origin)>,
    /// Set when the file (or a parent) is a mount file, which cannot be
    /// inherited.
    is_mount: bool,
}

#[derive(Debug, Clone)]
struct Body {
    file: RepoPath,
    text: Arc<BodyText>,
}

/// A file's body, kept after its directives are dropped: a template keeps
/// only what its nodes read.
#[derive(Debug)]
struct BodyText {
    body: Arc<str>,
    /// For each line of `body`, the 1-based line of the file.
    lines: Arc<[u32]>,
}

impl BodyText {
    fn file_line(&self, body_index: usize) -> u32 {
        self.lines.get(body_index).copied().unwrap_or(1)
    }
}

impl Template {
    /// The parameter names the file declares or refers to.
    fn wanted(&self) -> Vec<String> {
        let mut wanted: Vec<String> = self.params.keys().cloned().collect();
        if let Some(b) = &self.body {
            wanted.extend(template::references(&b.text.body));
        }
        for (s, _) in &self.sources {
            wanted.extend(template::references(s));
        }
        for (a, _) in &self.asserts {
            if let Assert::Sql(q) = a {
                wanted.extend(template::references(q));
            }
        }
        wanted
    }

    fn inherit(&mut self, parent: &Template) {
        self.includes.extend(parent.includes.iter().cloned());
        if parent.action.is_some() {
            self.action = parent.action.clone();
        }
        if parent.body.is_some() {
            self.body = parent.body.clone();
        }
        for d in &parent.depends {
            if !self.depends.iter().any(|(r, _)| r == &d.0) {
                self.depends.push(d.clone());
            }
        }
        for (k, v) in &parent.params {
            self.params.insert(k.clone(), v.clone());
        }
        for s in &parent.sources {
            if !self.sources.iter().any(|(p, _)| p == &s.0) {
                self.sources.push(s.clone());
            }
        }
        if parent.key.is_some() {
            self.key = parent.key.clone();
        }
        for a in &parent.asserts {
            if !self.asserts.iter().any(|(x, _)| x == &a.0) {
                self.asserts.push(a.clone());
            }
        }
        if parent.timeout.is_some() {
            self.timeout = parent.timeout.clone();
        }
    }
}

/// A file's role in a pipeline directory.
enum Role {
    Node,
    Mount {
        targets: Vec<(RepoPath, Origin)>,
        params: Vec<(String, ParamValue)>,
    },
    Ignored,
}

type Settings = BTreeMap<String, ParamValue>;

/// A name visible in a pipeline's namespace.
#[derive(Debug, Clone)]
struct NsEntry {
    file: RepoPath,
    /// The mount files the node came through, outermost first, each with
    /// the settings of the directory holding it.
    via: Option<Arc<Via>>,
    /// The settings of the directory that defines the node: the innermost
    /// layer of parameters.
    own: Arc<Settings>,
    overrides: Option<RepoPath>,
}

/// One mount level of a [`NsEntry`]: a persistent list, so mounting a
/// namespace one level further up adds one cell per entry and shares the
/// rest, instead of copying every entry's whole chain at every level
/// (which made deep mount chains cubic).
#[derive(Debug)]
struct Via {
    mount: RepoPath,
    settings: Arc<Settings>,
    next: Option<Arc<Via>>,
}

impl NsEntry {
    /// The mount files, outermost first.
    fn via_files(&self) -> Vec<RepoPath> {
        let mut out = Vec::new();
        let mut cell = self.via.as_deref();
        while let Some(v) = cell {
            out.push(v.mount.clone());
            cell = v.next.as_deref();
        }
        out
    }

    /// The parameter settings, innermost first: the last (outermost) wins.
    fn layers(&self) -> Vec<Arc<Settings>> {
        let mut out = Vec::new();
        let mut cell = self.via.as_deref();
        while let Some(v) = cell {
            out.push(v.settings.clone());
            cell = v.next.as_deref();
        }
        out.push(self.own.clone());
        out.reverse();
        out
    }
}

#[derive(Debug)]
struct Namespace {
    entries: BTreeMap<String, NsEntry>,
}

/// What resolving something read and said: the paths whose entry (kind
/// or bytes) it read, the directories it listed, its diagnostics, and the
/// parameter settings it made, used and wanted. The incremental plan
/// ([`incremental`]) reuses a unit whose reads did not change.
#[derive(Debug, Default, Clone)]
struct Trace {
    entries: Vec<RepoPath>,
    listings: Vec<RepoPath>,
    diags: Vec<Diagnostic>,
    settings: Vec<(String, ParamValue, RepoPath)>,
    used: Vec<Origin>,
    wanted: Vec<String>,
}

impl Trace {
    fn absorb(&mut self, other: &Trace) {
        self.entries.extend(other.entries.iter().cloned());
        self.listings.extend(other.listings.iter().cloned());
        self.diags.extend(other.diags.iter().cloned());
        self.settings.extend(other.settings.iter().cloned());
        self.used.extend(other.used.iter().cloned());
        self.wanted.extend(other.wanted.iter().cloned());
    }
}

/// The diagnostics, and (when tracking) a stack of traces being recorded.
#[derive(Debug, Default)]
struct Tracked {
    set: Diagnostics,
    frames: Option<RefCell<Vec<Trace>>>,
    /// A cycle or a chain too deep was reported: what a memoised template
    /// or namespace holds then depends on where it was first reached.
    context_sensitive: bool,
}

impl Tracked {
    fn tracking(&self) -> bool {
        self.frames.is_some()
    }

    fn push(&mut self, path: &RepoPath, line: u32, message: impl Into<String>) {
        let d = Diagnostic::new(path, line, message);
        self.note(|t| t.diags.push(d.clone()));
        self.set.insert(d);
    }

    /// Records into the innermost trace, when tracking.
    fn note(&self, f: impl FnOnce(&mut Trace)) {
        if let Some(frames) = &self.frames
            && let Some(top) = frames.borrow_mut().last_mut()
        {
            f(top);
        }
    }

    fn absorb(&self, trace: &Trace) {
        self.note(|t| t.absorb(trace));
    }

    fn open(&self) {
        if let Some(frames) = &self.frames {
            frames.borrow_mut().push(Trace::default());
        }
    }

    fn close(&self) -> Option<Trace> {
        self.frames.as_ref().and_then(|f| f.borrow_mut().pop())
    }
}

struct Compiler<'a> {
    vfs: Layered<'a>,
    diags: Tracked,
    parsed: HashMap<RepoPath, Arc<ParsedFile>>,
    templates: HashMap<RepoPath, Arc<Template>>,
    template_stack: Vec<RepoPath>,
    namespaces: HashMap<RepoPath, Option<Arc<Namespace>>>,
    /// What computing each template and namespace read and said (when
    /// tracking), given again to every unit that uses the memoised value.
    template_traces: HashMap<RepoPath, Arc<Trace>>,
    namespace_traces: HashMap<RepoPath, Arc<Trace>>,
    ns_stack: Vec<RepoPath>,
    graph: Graph,
    /// Every `@param` of a mount file, with the directory it applies to.
    settings_made: Vec<(String, ParamValue, RepoPath)>,
    /// The mount-file settings some node declares or uses.
    used_settings: HashSet<Origin>,
    /// Every parameter name some node declares or uses.
    wanted_names: BTreeSet<String>,
}

impl<'a> Compiler<'a> {
    fn new(vfs: &'a dyn Vfs) -> Self {
        Compiler {
            vfs: Layered::new(vfs),
            diags: Tracked::default(),
            parsed: HashMap::new(),
            templates: HashMap::new(),
            template_stack: Vec::new(),
            namespaces: HashMap::new(),
            template_traces: HashMap::new(),
            namespace_traces: HashMap::new(),
            ns_stack: Vec::new(),
            graph: Graph::default(),
            settings_made: Vec::new(),
            used_settings: HashSet::new(),
            wanted_names: BTreeSet::new(),
        }
    }

    /// Reads and parses a file once; its syntax errors are reported once.
    fn parse_file(&mut self, path: &RepoPath) -> Arc<ParsedFile> {
        self.diags.note(|t| t.entries.push(path.clone()));
        if let Some(p) = self.parsed.get(path) {
            let p = p.clone();
            // Said again in the unit that reads it (the set keeps one).
            if self.diags.tracking() {
                for e in &p.errors {
                    self.diags.push(path, e.line, e.message.clone());
                }
            }
            return p;
        }
        let parsed = match self.vfs.read_file(path) {
            Ok(bytes) => directive::parse(&bytes),
            Err(e) => {
                self.diags.push(path, 1, format!("cannot read file: {e}"));
                ParsedFile::default()
            }
        };
        for e in &parsed.errors {
            self.diags.push(path, e.line, e.message.clone());
        }
        let parsed = Arc::new(parsed);
        self.parsed.insert(path.clone(), parsed.clone());
        parsed
    }

    /// Resolves an `@include` argument: `./` and `../` are relative to the
    /// including file, anything else to the repository root.
    fn include_path(&mut self, from: &RepoPath, line: u32, raw: &str) -> Option<RepoPath> {
        let res = if raw.starts_with("./") || raw.starts_with("../") {
            from.parent().join(raw)
        } else {
            RepoPath::parse(raw)
        };
        match res {
            Ok(p) => Some(p),
            Err(e) => {
                self.diags.push(from, line, format!("@include {raw}: {e}"));
                None
            }
        }
    }

    /// What a file in a pipeline directory is.
    fn role(&mut self, file: &RepoPath) -> Role {
        let ext = file.extension();
        if ext == Some("csv") {
            return Role::Node;
        }
        let parsed = self.parse_file(file);
        let mut targets = Vec::new();
        let mut inherits = false;
        for d in &parsed.directives {
            if let DirectiveKind::Include(raw) = &d.kind {
                let Some(target) = self.include_path(file, d.line, raw) else {
                    continue;
                };
                if self.kind(&target) == Ok(EntryKind::Dir) {
                    targets.push((
                        target,
                        Origin {
                            file: file.clone(),
                            line: d.line,
                            column: 0,
                        },
                    ));
                } else {
                    inherits = true;
                }
            }
        }
        if targets.is_empty() {
            if default_action_path(ext).is_some() || !parsed.directives.is_empty() {
                return Role::Node;
            }
            return Role::Ignored;
        }
        // A mount file only mounts and sets parameters.
        let mut params = Vec::new();
        for d in &parsed.directives {
            match &d.kind {
                DirectiveKind::Include(_) => {}
                DirectiveKind::Param { key, value } => params.push((
                    key.clone(),
                    ParamValue {
                        value: value.clone(),
                        origin: Origin {
                            file: file.clone(),
                            line: d.line,
                            column: 0,
                        },
                    },
                )),
                other => self.diags.push(
                    file,
                    d.line,
                    format!(
                        "{} has no meaning in a mount file (a file that includes a directory); only @include and @param belong here",
                        directive_name(other)
                    ),
                ),
            }
        }
        if inherits {
            self.diags.push(
                file,
                1,
                "a file cannot both mount a directory and inherit a file: split it into a mount file and a node",
            );
        }
        Role::Mount { targets, params }
    }

    /// The file after its includes, memoised; include cycles are reported
    /// at the `@include` that closes them.
    fn template(&mut self, file: &RepoPath) -> Arc<Template> {
        if let Some(t) = self.templates.get(file) {
            let t = t.clone();
            if let Some(trace) = self.template_traces.get(file) {
                self.diags.absorb(trace);
            }
            return t;
        }
        self.diags.open();
        let t = self.build_template(file);
        if let Some(trace) = self.diags.close() {
            let trace = Arc::new(trace);
            self.diags.absorb(&trace);
            self.template_traces.insert(file.clone(), trace);
        }
        t
    }

    fn build_template(&mut self, file: &RepoPath) -> Arc<Template> {
        self.template_stack.push(file.clone());
        let parsed = self.parse_file(file);
        let mut t = Template::default();
        for d in &parsed.directives {
            let DirectiveKind::Include(raw) = &d.kind else {
                continue;
            };
            let Some(target) = self.include_path(file, d.line, raw) else {
                continue;
            };
            match self.kind(&target) {
                Ok(EntryKind::File) => {
                    if let Some(i) = self.template_stack.iter().position(|p| p == &target) {
                        let mut chain: Vec<String> = self.template_stack[i..]
                            .iter()
                            .map(|p| p.to_string())
                            .collect();
                        chain.push(target.to_string());
                        self.diags.context_sensitive = true;
                        self.diags.push(
                            file,
                            d.line,
                            format!("include cycle: {}", chain.join(" -> ")),
                        );
                        continue;
                    }
                    if self.template_stack.len() > MAX_INCLUDE_DEPTH {
                        self.diags.context_sensitive = true;
                        self.diags.push(
                            file,
                            d.line,
                            format!(
                                "include chain deeper than {MAX_INCLUDE_DEPTH} files ({}); include fewer levels",
                                chain_summary(&self.template_stack, &target)
                            ),
                        );
                        continue;
                    }
                    let parent = self.template(&target);
                    if parent.is_mount {
                        self.diags.push(
                            file,
                            d.line,
                            format!("@include {raw}: that file mounts a directory and cannot be inherited; include the directory instead"),
                        );
                        continue;
                    }
                    t.inherit(&parent);
                    t.includes.push(target);
                }
                Ok(EntryKind::Dir) => t.is_mount = true,
                Ok(EntryKind::Unusable(why)) | Err(VfsError::Unusable(why)) => {
                    self.diags
                        .push(file, d.line, format!("@include {raw}: {why}"));
                }
                Err(VfsError::NotFound) => {
                    let mut msg = format!("@include {raw}: no such file or directory");
                    if let Some(s) = self.sibling_suggestion(&target) {
                        msg.push_str(&format!(" (did you mean {s}?)"));
                    }
                    self.diags.push(file, d.line, msg);
                }
                Err(VfsError::Io(e)) => {
                    self.diags
                        .push(file, d.line, format!("@include {raw}: {e}"))
                }
            }
        }
        for d in &parsed.directives {
            let origin = Origin {
                file: file.clone(),
                line: d.line,
                column: d.column,
            };
            match &d.kind {
                DirectiveKind::Include(_) => {}
                DirectiveKind::Depend(r) => {
                    if let Some(pos) = t.depends.iter().position(|(x, _)| x == r) {
                        t.depends[pos].1 = origin;
                    } else {
                        t.depends.push((r.clone(), origin));
                    }
                }
                DirectiveKind::Param { key, value } => {
                    t.params.insert(
                        key.clone(),
                        ParamValue {
                            value: value.clone(),
                            origin,
                        },
                    );
                }
                DirectiveKind::Source(s) => {
                    if !t.sources.iter().any(|(x, _)| x == s) {
                        t.sources.push((s.clone(), origin));
                    }
                }
                DirectiveKind::Key(cols) => t.key = Some((cols.clone(), origin)),
                DirectiveKind::Assert(a) => {
                    if !t.asserts.iter().any(|(x, _)| x == a) {
                        t.asserts.push((a.clone(), origin));
                    }
                }
                DirectiveKind::Timeout(s) => t.timeout = Some((*s, origin)),
                DirectiveKind::Command(c) => {
                    t.action = Some((Action::Command(c.clone()), file.clone()))
                }
                DirectiveKind::Engine(e) => {
                    t.action = Some((Action::Engine(e.clone()), file.clone()))
                }
            }
        }
        // Exact sizes: a template lives as long as the compile, one per
        // file, and a growing Vec keeps room for four.
        t.includes.shrink_to_fit();
        t.depends.shrink_to_fit();
        t.sources.shrink_to_fit();
        t.asserts.shrink_to_fit();
        let blank = parsed.body_is_blank();
        // The parsed file is read only through its template from here on
        // (a file's role is decided before its nodes are added; were it
        // parsed again, its diagnostics are the same and said once), so
        // only the body is kept, moved out when nothing else holds it.
        drop(self.parsed.remove(file));
        if !blank {
            let text = match Arc::try_unwrap(parsed) {
                Ok(p) => BodyText {
                    body: p.body.into(),
                    lines: p.body_lines.into(),
                },
                Err(p) => BodyText {
                    body: p.body.as_str().into(),
                    lines: p.body_lines.as_slice().into(),
                },
            };
            t.body = Some(Body {
                file: file.clone(),
                text: Arc::new(text),
            });
        }
        self.template_stack.pop();
        let t = Arc::new(t);
        self.templates.insert(file.clone(), t.clone());
        t
    }

    /// A near-miss for a missing include target among its would-be siblings.
    fn sibling_suggestion(&self, target: &RepoPath) -> Option<String> {
        let parent = target.parent();
        self.diags.note(|t| t.listings.push(parent.clone()));
        let entries = self.vfs.read_dir(&parent).ok()?;
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        directive::nearest(target.file_name(), names.into_iter())
            .map(|n| parent.child(n).to_string())
    }

    /// The names visible in `dir`: its own nodes, then mounted ones.
    fn namespace(&mut self, dir: &RepoPath) -> Option<Arc<Namespace>> {
        if let Some(ns) = self.namespaces.get(dir) {
            let ns = ns.clone();
            if let Some(trace) = self.namespace_traces.get(dir) {
                self.diags.absorb(trace);
            }
            return ns;
        }
        self.diags.open();
        let ns = self.build_namespace(dir).map(Arc::new);
        if let Some(trace) = self.diags.close() {
            let trace = Arc::new(trace);
            self.diags.absorb(&trace);
            self.namespace_traces.insert(dir.clone(), trace);
        }
        self.namespaces.insert(dir.clone(), ns.clone());
        ns
    }

    /// The kind of `path`, noted as read.
    fn kind(&self, path: &RepoPath) -> Result<EntryKind, VfsError> {
        self.diags.note(|t| t.entries.push(path.clone()));
        self.vfs.kind(path)
    }

    fn build_namespace(&mut self, dir: &RepoPath) -> Option<Namespace> {
        self.diags.note(|t| t.listings.push(dir.clone()));
        let listing = match self.vfs.read_dir(dir) {
            Ok(l) => l,
            Err(_) => return None,
        };
        self.ns_stack.push(dir.clone());
        let mut own: BTreeMap<String, RepoPath> = BTreeMap::new();
        let mut mounts: Vec<(RepoPath, Vec<(RepoPath, Origin)>)> = Vec::new();
        let mut settings = Settings::new();
        for entry in &listing {
            if entry.name.starts_with('_') || entry.name.starts_with('.') {
                continue;
            }
            // A name with a newline could forge `path:line:` lines in what
            // a pusher or a forge is shown.
            if entry.name.chars().any(|c| c.is_control() || c == '\\') {
                self.diags.push(
                    dir,
                    1,
                    format!(
                        "file name {:?} contains a control character or backslash; rename it",
                        entry.name
                    ),
                );
                continue;
            }
            let file = dir.child(&entry.name);
            match &entry.kind {
                EntryKind::Dir => continue,
                EntryKind::Unusable(why) => {
                    self.diags.push(&file, 1, why.clone());
                    continue;
                }
                EntryKind::File => {}
            }
            match self.role(&file) {
                Role::Ignored => {}
                Role::Node => {
                    let name = file.stem().to_string();
                    if !is_node_name(&name) {
                        self.diags.push(
                            &file,
                            1,
                            format!(
                                "node name `{name}` (the file name without its extension) must be letters, digits and `_`: `@depend ./{name}` could not name it; rename the file, e.g. to {}",
                                file.parent().child(&format!(
                                    "{}{}",
                                    suggest_node_name(&name),
                                    file.extension().map(|e| format!(".{e}")).unwrap_or_default()
                                ))
                            ),
                        );
                        continue;
                    }
                    if let Some(prev) = own.get(&name) {
                        self.diags.push(
                            &file,
                            1,
                            format!("two files define node `{name}`: {prev} and {file}"),
                        );
                    } else {
                        own.insert(name, file);
                    }
                }
                Role::Mount { targets, params } => {
                    for (key, value) in params {
                        if let Some(prev) = settings.get(&key) {
                            if prev.value != value.value {
                                self.diags.push(
                                    &value.origin.file,
                                    value.origin.line,
                                    format!(
                                        "@param {key} is set to `{}` here and to `{}` at {}",
                                        value.value, prev.value, prev.origin
                                    ),
                                );
                            }
                            continue;
                        }
                        self.diags
                            .note(|t| t.settings.push((key.clone(), value.clone(), dir.clone())));
                        self.settings_made
                            .push((key.clone(), value.clone(), dir.clone()));
                        settings.insert(key, value);
                    }
                    mounts.push((file, targets));
                }
            }
        }
        let settings = Arc::new(settings);

        // Mounted names, with the mount that brought each, for conflicts.
        let mut mounted: BTreeMap<String, (NsEntry, Origin)> = BTreeMap::new();
        let mut conflicts: BTreeMap<String, Vec<(RepoPath, Origin)>> = BTreeMap::new();
        for (mount_file, targets) in mounts {
            for (target, origin) in targets {
                if self.ns_stack.len() > MAX_INCLUDE_DEPTH {
                    self.diags.context_sensitive = true;
                    self.diags.push(
                        &origin.file,
                        origin.line,
                        format!(
                            "mount chain deeper than {MAX_INCLUDE_DEPTH} directories ({}); mount fewer levels",
                            chain_summary(&self.ns_stack, &target)
                        ),
                    );
                    continue;
                }
                if let Some(i) = self.ns_stack.iter().position(|p| p == &target) {
                    let mut chain: Vec<String> =
                        self.ns_stack[i..].iter().map(|p| p.to_string()).collect();
                    chain.push(target.to_string());
                    self.diags.context_sensitive = true;
                    self.diags.push(
                        &origin.file,
                        origin.line,
                        format!("mount cycle: {}", chain.join(" -> ")),
                    );
                    continue;
                }
                let Some(sub) = self.namespace(&target) else {
                    self.diags.push(
                        &origin.file,
                        origin.line,
                        format!("cannot mount {target}: the directory cannot be read"),
                    );
                    continue;
                };
                for (name, e) in &sub.entries {
                    let new = NsEntry {
                        file: e.file.clone(),
                        via: Some(Arc::new(Via {
                            mount: mount_file.clone(),
                            settings: settings.clone(),
                            next: e.via.clone(),
                        })),
                        own: e.own.clone(),
                        overrides: None,
                    };
                    match mounted.get(name) {
                        Some((prev, _)) if prev.file == new.file => {}
                        Some((prev, prev_origin)) => {
                            let c = conflicts
                                .entry(name.clone())
                                .or_insert_with(|| vec![(prev.file.clone(), prev_origin.clone())]);
                            c.push((new.file.clone(), origin.clone()));
                        }
                        None => {
                            mounted.insert(name.clone(), (new, origin.clone()));
                        }
                    }
                }
            }
        }
        for (name, defs) in conflicts {
            if own.contains_key(&name) {
                continue;
            }
            let list: Vec<String> = defs
                .iter()
                .map(|(f, o)| format!("{f} (mounted at {o})"))
                .collect();
            let (_, last) = &defs[defs.len() - 1];
            self.diags.push(
                &last.file,
                last.line,
                format!(
                    "node `{name}` comes from two mounts: {}; add {}/{name}.<ext> to choose one",
                    list.join(" and "),
                    dir
                ),
            );
        }
        self.ns_stack.pop();

        let mut entries: BTreeMap<String, NsEntry> = BTreeMap::new();
        for (name, file) in own {
            let overrides = mounted.remove(&name).map(|(e, _)| e.file);
            entries.insert(
                name,
                NsEntry {
                    file,
                    via: None,
                    own: settings.clone(),
                    overrides,
                },
            );
        }
        for (name, (e, _)) in mounted {
            entries.insert(name, e);
        }
        Some(Namespace { entries })
    }

    /// Resolves one entry of `dir`'s namespace into a node.
    fn add_node(&mut self, dir: &RepoPath, entry: &NsEntry, queue: &mut VecDeque<RepoPath>) {
        let name = entry.file.stem().to_string();
        let id: NodeId = self.graph.nodes.len();
        let mut node = Node {
            id,
            dir: dir.clone(),
            name: name.clone(),
            file: entry.file.clone(),
            via: entry.via_files(),
            overrides: entry.overrides.clone(),
            includes: Vec::new(),
            action: ResolvedAction {
                action: Action::Static,
                defined_in: entry.file.clone(),
                by_extension: true,
            },
            body: Arc::default(),
            body_from: entry.file.clone(),
            body_lines: Arc::default(),
            body_map: Default::default(),
            params: BTreeMap::new(),
            deps: Vec::new(),
            sources: Vec::new(),
            key: None,
            asserts: Vec::new(),
            assert_maps: BTreeMap::new(),
            timeout: None,
        };
        // Problems that hold only in this pipeline say which one.
        let context = if entry.via.is_none() {
            String::new()
        } else {
            format!(" (in pipeline {dir})")
        };

        if entry.file.extension() == Some("csv") {
            self.diags.note(|t| t.entries.push(entry.file.clone()));
            match self.vfs.read_file(&entry.file) {
                Ok(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(text) => node.body = text.into(),
                    Err(e) => {
                        let line = bytes[..e.valid_up_to()]
                            .iter()
                            .filter(|b| **b == b'\n')
                            .count()
                            + 1;
                        self.diags.push(
                            &entry.file,
                            u32::try_from(line).unwrap_or(u32::MAX),
                            "CSV file is not valid UTF-8; convert it, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`, and commit the result",
                        )
                    }
                },
                Err(e) => self
                    .diags
                    .push(&entry.file, 1, format!("cannot read file: {e}")),
            }
            self.register(node);
            return;
        }

        let t = self.template(&entry.file);
        node.includes = t.includes.clone();

        // Parameters: the node's defaults, then each mount level's settings,
        // innermost first, so the outermost setting wins.
        let mut params: BTreeMap<String, ParamValue> = t.params.clone();
        let wanted = t.wanted();
        let layers = entry.layers();
        // The mounted node this one overrides counts as a user of the
        // settings it would have used: a group's common `@param clinic=b`
        // is no mistake because this clinic replaced the node that uses it.
        if let Some(over) = &entry.overrides {
            let replaced = self.template(over).wanted();
            for k in replaced {
                for layer in &layers {
                    if let Some(v) = layer.get(&k) {
                        self.diags.note(|t| t.used.push(v.origin.clone()));
                        self.used_settings.insert(v.origin.clone());
                    }
                }
            }
        }
        for k in wanted {
            // The outermost layer that sets `k` wins.
            if let Some(v) = layers.iter().rev().find_map(|layer| layer.get(&k)) {
                params.insert(k.clone(), v.clone());
            }
            // Every mount-file setting of `k` this node sees is used, not
            // only the one that wins.
            for layer in &layers {
                if let Some(v) = layer.get(&k) {
                    self.diags.note(|t| t.used.push(v.origin.clone()));
                    self.used_settings.insert(v.origin.clone());
                }
            }
            self.diags.note(|t| t.wanted.push(k.clone()));
            self.wanted_names.insert(k);
        }
        let values: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        node.params = params;

        // Action: the inherited one, else the default for the extension.
        node.action = match &t.action {
            Some((action, from)) => ResolvedAction {
                action: action.clone(),
                defined_in: from.clone(),
                by_extension: false,
            },
            None => match default_action_path(entry.file.extension()) {
                Some(path) => {
                    let p = RepoPath::parse(path).expect("built-in action paths are valid");
                    let at = self.template(&p);
                    match &at.action {
                        Some((action, from)) => ResolvedAction {
                            action: action.clone(),
                            defined_in: from.clone(),
                            by_extension: true,
                        },
                        None => {
                            self.diags
                                .push(&p, 1, "action file defines no @command or @engine");
                            node.action
                        }
                    }
                }
                None => {
                    self.diags.push(
                        &entry.file,
                        1,
                        "no action for this file: include one (e.g. `@include action/python`) or use a known extension (.sql, .py, .sh, .R, .csv)",
                    );
                    node.action
                }
            },
        };

        // Body, with templates filled.
        match &t.body {
            Some(b) => {
                node.body_from = b.file.clone();
                node.body_lines = b.text.lines.clone();
                match template::substitute_mapped(&b.text.body, &values) {
                    // Without templates: the file's body, shared.
                    Ok(_) if !b.text.body.contains("{{") => node.body = b.text.body.clone(),
                    Ok((text, map)) => (node.body, node.body_map) = (text.into(), map),
                    Err(errs) => {
                        for e in errs {
                            let line = b.text.file_line(e.line);
                            self.diags
                                .push(&b.file, line, format!("{}{context}", e.message));
                        }
                    }
                }
            }
            None => {
                if matches!(node.action.action, Action::Engine(_)) {
                    self.diags.push(
                        &entry.file,
                        1,
                        "empty body: a SQL node needs a query that returns its table",
                    );
                }
            }
        }

        // Sources, after templates, must stay inside the data root.
        let mut tables: BTreeMap<String, Origin> = BTreeMap::new();
        // Exact sizes: a node lives as long as the graph.
        node.sources.reserve_exact(t.sources.len());
        node.deps.reserve_exact(t.depends.len());
        node.asserts.reserve_exact(t.asserts.len());
        for (raw, origin) in &t.sources {
            let text = match template::substitute(raw, &values) {
                Ok(s) => s,
                Err(errs) => {
                    self.template_errors(origin, errs, &context);
                    continue;
                }
            };
            let path = match RepoPath::parse(&text) {
                Ok(p) => p,
                Err(e) => {
                    self.diags.push(
                        &origin.file,
                        origin.line,
                        format!(
                            "@source data://{text}: {}",
                            e.to_string().replace("the repository", "the data root")
                        ),
                    );
                    continue;
                }
            };
            let table = path.stem().to_string();
            self.claim_table(&mut tables, &table, origin);
            node.sources.push(SourceRef {
                path,
                table,
                origin: origin.clone(),
            });
        }

        for (r, origin) in &t.depends {
            let dep_dir = match &r.dir {
                None => dir.clone(),
                Some(d) => match RepoPath::parse(d) {
                    Ok(p) => {
                        queue.push_back(p.clone());
                        p
                    }
                    Err(e) => {
                        self.diags
                            .push(&origin.file, origin.line, format!("@depend {r}: {e}"));
                        continue;
                    }
                },
            };
            self.claim_table(&mut tables, &r.name, origin);
            node.deps.push(Dep {
                dir: dep_dir,
                name: r.name.clone(),
                node: None,
                origin: origin.clone(),
            });
        }
        node.key = t.key.clone();
        // Templates apply to every piece of user SQL, `@assert sql:` too.
        for (a, origin) in &t.asserts {
            let a = match a {
                Assert::Sql(q) => match template::substitute_mapped(q, &values) {
                    Ok((q, map)) => {
                        node.assert_maps.insert(node.asserts.len(), map);
                        Assert::Sql(q)
                    }
                    Err(errs) => {
                        self.template_errors(origin, errs, &context);
                        continue;
                    }
                },
                other => other.clone(),
            };
            node.asserts.push((a, origin.clone()));
        }
        node.timeout = t.timeout.clone();
        self.register(node);
        // A pipeline's own node file is read once: its template is not
        // kept (the node holds what it needs, its body shared). A mounted
        // file is kept, since every pipeline mounting its group reads it
        // again; another read of an own file (a pipeline mounting another
        // pipeline, an `@include` of a node file) builds the same template
        // again, as the incremental plan does per unit.
        if entry.via.is_none() {
            drop(t);
            self.templates.remove(&entry.file);
            self.template_traces.remove(&entry.file);
        }
    }

    /// A mount file's `@param` that no node of the pipeline declares or
    /// uses does nothing: most often a typo, whose node quietly keeps its
    /// default.
    fn unused_settings(&mut self) {
        let made = std::mem::take(&mut self.settings_made);
        for (key, value, dir) in made {
            if self.used_settings.contains(&value.origin) {
                continue;
            }
            let mut msg =
                format!("@param {key} is set here, but no node of {dir} declares or uses `{key}`");
            match directive::nearest(
                &key,
                self.wanted_names
                    .iter()
                    .map(String::as_str)
                    .filter(|n| *n != key),
            ) {
                Some(s) => msg.push_str(&format!(" (did you mean `{s}`?)")),
                None => msg.push_str(&format!(
                    "; declare it in a node with `@param {key}=DEFAULT`, use it as `{{{{{key}}}}}`, or remove this line"
                )),
            }
            self.diags.push(&value.origin.file, value.origin.line, msg);
        }
    }

    /// Input table names must be unique ignoring case (SQLite's are) and
    /// after the `SLUICE_INPUT_<Name>` mangling (a command action sees them
    /// as environment variables).
    /// Reports a directive's template errors at the directive.
    fn template_errors(
        &mut self,
        origin: &Origin,
        errs: Vec<template::TemplateError>,
        context: &str,
    ) {
        for e in errs {
            self.diags
                .push(&origin.file, origin.line, format!("{}{context}", e.message));
        }
    }

    fn claim_table(&mut self, tables: &mut BTreeMap<String, Origin>, table: &str, origin: &Origin) {
        let folded: String = table
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        if let Some(prev) = tables.get(&folded) {
            self.diags.push(
                &origin.file,
                origin.line,
                format!("two inputs are named `{table}` (the other at {prev}); inside the node each input is a table named after its node or file stem"),
            );
        } else {
            tables.insert(folded, origin.clone());
        }
    }

    fn register(&mut self, node: Node) {
        self.graph
            .index
            .insert((node.dir.clone(), node.name.clone()), node.id);
        self.graph.nodes.push(node);
    }

    /// Links dependencies to nodes, then orders the graph and names cycles.
    fn link(&mut self) {
        for i in 0..self.graph.nodes.len() {
            self.link_node(i);
        }
        self.order();
    }

    /// Links node `i`'s dependencies; a missing one is a diagnostic.
    fn link_node(&mut self, i: NodeId) {
        {
            for j in 0..self.graph.nodes[i].deps.len() {
                let dep = &self.graph.nodes[i].deps[j];
                let key = (dep.dir.clone(), dep.name.clone());
                if let Some(&target) = self.graph.index.get(&key) {
                    self.graph.nodes[i].deps[j].node = Some(target);
                    continue;
                }
                let dep = dep.clone();
                let from_dir = self.graph.nodes[i].dir.clone();
                let msg = match self.namespaces.get(&dep.dir) {
                    Some(Some(ns)) => {
                        let mut m = if dep.dir == from_dir {
                            format!(
                                "@depend ./{}: no node `{}` in pipeline {}",
                                dep.name, dep.name, dep.dir
                            )
                        } else {
                            format!(
                                "@depend /{}/{}: no node `{}` in {}",
                                dep.dir, dep.name, dep.name, dep.dir
                            )
                        };
                        if let Some(s) =
                            directive::nearest(&dep.name, ns.entries.keys().map(String::as_str))
                        {
                            m.push_str(&format!(" (did you mean `{s}`?)"));
                        }
                        m
                    }
                    _ => format!(
                        "@depend /{}/{}: no directory `{}` in the repository",
                        dep.dir, dep.name, dep.dir
                    ),
                };
                self.diags.push(&dep.origin.file, dep.origin.line, msg);
            }
        }
    }

    /// Orders the linked graph and names its cycles.
    fn order(&mut self) {
        let (order, left) = self.graph.topo_sort();
        for cycle in self.graph.find_cycles(&left) {
            let first = &self.graph.nodes[cycle[0]];
            let mut names: Vec<String> = cycle
                .iter()
                .map(|id| self.graph.nodes[*id].display_name(&first.dir))
                .collect();
            names.push(first.display_name(&first.dir));
            let next = cycle.get(1).copied().unwrap_or(cycle[0]);
            let origin = first
                .deps
                .iter()
                .find(|d| d.node == Some(next))
                .map(|d| d.origin.clone())
                .unwrap_or(Origin {
                    file: first.file.clone(),
                    line: 1,
                    column: 0,
                });
            self.diags.push(
                &origin.file,
                origin.line,
                format!("dependency cycle: {}", names.join(" -> ")),
            );
        }
        self.graph.order = order;
    }
}

/// A chain too deep to print whole: its first two and last two links.
fn chain_summary(stack: &[RepoPath], next: &RepoPath) -> String {
    let mut all: Vec<String> = stack.iter().map(|p| p.to_string()).collect();
    all.push(next.to_string());
    if all.len() > 5 {
        let tail = all.split_off(all.len() - 2);
        all.truncate(2);
        all.push(format!("… {} more …", stack.len() + 1 - 4));
        all.extend(tail);
    }
    all.join(" -> ")
}

/// `[A-Za-z0-9_]+`: what `@depend ./NAME` and a SQL table name can hold
/// without quoting.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name` with every other character made `_`.
fn suggest_node_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn directive_name(kind: &DirectiveKind) -> &'static str {
    match kind {
        DirectiveKind::Include(_) => "@include",
        DirectiveKind::Depend(_) => "@depend",
        DirectiveKind::Param { .. } => "@param",
        DirectiveKind::Source(_) => "@source",
        DirectiveKind::Key(_) => "@key",
        DirectiveKind::Assert(_) => "@assert",
        DirectiveKind::Timeout(_) => "@timeout",
        DirectiveKind::Command(_) => "@command",
        DirectiveKind::Engine(_) => "@engine",
    }
}

/// Expands the `pipelines` globs of `sluice.toml` into directories.
/// Returns the directories and, per pattern that matched nothing or matched
/// something unusable (a submodule, a dangling link), a message.
///
/// A glob never walks through a directory symlink (`clinics/l1 -> .` would
/// make `**` copy the tree into itself until the path grows too long), so
/// expansion visits each real directory at most once per pattern; a
/// literal segment naming a symlink is still followed.
pub fn find_pipelines(vfs: &dyn Vfs, patterns: &[String]) -> (Vec<RepoPath>, Vec<String>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for pattern in patterns {
        let segments: Vec<&str> = pattern
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        if segments.contains(&"..") {
            problems.push(format!(
                "pipelines pattern `{pattern}` leaves the repository"
            ));
            continue;
        }
        let before = found.len();
        match_segments(vfs, &RepoPath::root(), &segments, &mut found, &mut problems);
        if found.len() == before {
            problems.push(format!(
                "pipelines pattern `{pattern}` matches no directory"
            ));
        }
    }
    found.sort();
    found.dedup();
    (found, problems)
}

fn match_segments(
    vfs: &dyn Vfs,
    dir: &RepoPath,
    segments: &[&str],
    found: &mut Vec<RepoPath>,
    problems: &mut Vec<String>,
) {
    let Some((seg, rest)) = segments.split_first() else {
        if !dir.is_root() {
            found.push(dir.clone());
        }
        return;
    };
    let is_glob = seg.contains(['*', '?', '[', '{']);
    if !is_glob {
        let child = dir.child(seg);
        match vfs.kind(&child) {
            Ok(EntryKind::Dir) => match_segments(vfs, &child, rest, found, problems),
            Ok(EntryKind::Unusable(why)) => {
                problems.push(format!(
                    "`{child}` (named by `pipelines`) cannot be used: {why}"
                ));
            }
            _ => {}
        }
        return;
    }
    let Ok(entries) = vfs.read_dir(dir) else {
        return;
    };
    let visible: Vec<&super::vfs::DirEntry> = entries
        .iter()
        .filter(|e| !e.name.starts_with('.') && !e.name.starts_with('_'))
        .collect();
    // Compiled once for every entry of the directory.
    let glob = super::glob::Glob::new(seg);
    // An unusable entry where the last segment asks for a pipeline (a
    // submodule, a dangling link) is said, not skipped; under `**` the
    // files of every pipeline would match, and those the resolver reports.
    let matches_last = |name: &str| -> bool {
        rest.is_empty() && *seg != "**" && glob.as_ref().is_ok_and(|g| g.is_match(name))
    };
    for e in &visible {
        if let EntryKind::Unusable(why) = &e.kind
            && matches_last(&e.name)
        {
            problems.push(format!(
                "`{}` (matched by `pipelines`) cannot be used: {why}",
                dir.child(&e.name)
            ));
        }
    }
    let subdirs = visible
        .into_iter()
        .filter(|e| e.kind == EntryKind::Dir && !vfs.is_symlink(&dir.child(&e.name)));
    if *seg == "**" {
        match_segments(vfs, dir, rest, found, problems);
        for e in subdirs {
            match_segments(vfs, &dir.child(&e.name), segments, found, problems);
        }
        return;
    }
    let matcher = match glob {
        Ok(g) => g,
        Err(e) => {
            problems.push(format!(
                "pipelines pattern segment `{seg}` is not a valid glob: {e}"
            ));
            return;
        }
    };
    for e in subdirs {
        if matcher.is_match(&e.name) {
            match_segments(vfs, &dir.child(&e.name), rest, found, problems);
        }
    }
}
