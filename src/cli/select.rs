//! `--select` / `--exclude`, shared by `plan`, `run` and `ls`: the
//! arguments, and turning them into node sets with
//! [`plan::select`](crate::plan::select).

use std::collections::HashMap;

use clap::Args;

use crate::engine::Workspace;
use crate::engine::manifests::production;
use crate::pipeline::{NodeId, RepoPath};
use crate::plan::select::{self, PipelineSelection, Selector};
use crate::plan::{self, Change, PipelinePlan};
use crate::store::Stores;

#[derive(Debug, Clone, Default, Args)]
pub struct SelectArgs {
    /// Only these nodes: NAME (in every pipeline), PIPELINE/NAME, a glob
    /// (clinics/*/Albumin), a whole PIPELINE, `+X` (X and its ancestors),
    /// `X+` (X and its descendants), `X+1` / `1+X` (one level),
    /// `state:modified` (changed against production, or new) and
    /// `state:modified+`. Repeat it, or separate selectors with spaces, for
    /// their union.
    #[arg(short = 's', long = "select", value_name = "SELECTOR")]
    pub select: Vec<String>,
    /// Leave out these nodes (same syntax as --select).
    #[arg(long, value_name = "SELECTOR")]
    pub exclude: Vec<String>,
}

impl SelectArgs {
    /// True when neither --select nor --exclude was given.
    pub fn is_empty(&self) -> bool {
        self.select.is_empty() && self.exclude.is_empty()
    }

    /// The parsed selectors, and whether any needs the plan (`state:`).
    pub fn parse(&self) -> anyhow::Result<Parsed> {
        let select = select::parse_all(&self.select)?;
        let exclude = select::parse_all(&self.exclude)?;
        let needs_state = select.iter().chain(&exclude).any(Selector::needs_state);
        Ok(Parsed {
            select,
            exclude,
            needs_state,
        })
    }
}

pub struct Parsed {
    pub select: Vec<Selector>,
    pub exclude: Vec<Selector>,
    pub needs_state: bool,
}

impl Parsed {
    /// The selected nodes of each pipeline; `plans` (each pipeline's plan
    /// against production) is needed for `state:` selectors.
    pub fn resolve(
        &self,
        ws: &Workspace,
        pipelines: &[RepoPath],
        plans: &[PipelinePlan],
    ) -> anyhow::Result<Vec<PipelineSelection>> {
        let changes: HashMap<(&str, &str), Change> = plans
            .iter()
            .flat_map(|p| {
                p.nodes
                    .iter()
                    .map(move |n| ((p.pipeline.as_str(), n.name.as_str()), n.change))
            })
            .collect();
        let modified = |p: &RepoPath, id: NodeId| {
            let name = ws.graph.nodes[id].display_name(p);
            matches!(
                changes.get(&(p.as_str(), name.as_str())),
                Some(Change::Modified | Change::New)
            )
        };
        Ok(select::select(
            &ws.graph,
            pipelines,
            &modified,
            &self.select,
            &self.exclude,
        )?)
    }
}

/// Each pipeline's plan against its production manifest (none without a
/// state directory); an unreadable production manifest is a warning.
pub fn plans(
    ws: &mut Workspace,
    stores: Option<&Stores>,
    pipelines: &[RepoPath],
) -> anyhow::Result<Vec<PipelinePlan>> {
    let (hashes, _) = ws.hashes(stores.map(|s| &*s.memo));
    let mut plans = Vec::new();
    for p in pipelines {
        let production = match stores {
            Some(s) => {
                let prod = production(s, p)?;
                if let Some(w) = prod.warning {
                    eprintln!("sluice: warning: {w}");
                }
                prod.manifest.map(|(_, m)| m)
            }
            None => None,
        };
        plans.push(plan::plan_pipeline(
            &ws.graph,
            &hashes,
            p,
            production.as_deref(),
        ));
    }
    Ok(plans)
}
