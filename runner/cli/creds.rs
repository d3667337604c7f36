//! `taskbox creds inventory`: every credential every loadable profile grants,
//! for access reviews.

/// Credential commands.
#[derive(Debug, clap::Subcommand)]
pub enum CredsCmd {
    /// List, across all profiles taskbox can load, which credentials each
    /// grants, to which hosts, for how long, under which approval rule.
    Inventory {
        /// One JSON object per grant instead of a table.
        #[arg(long)]
        json: bool,
    },
}

impl CredsCmd {
    /// Runs the command.
    pub fn execute(self) -> anyhow::Result<i32> {
        let CredsCmd::Inventory { json } = self;
        let mut rows = Vec::new();
        for (name, _) in super::catalog().list()? {
            let Ok(p) = super::load(&name) else {
                eprintln!(
                    "taskbox: profile {name} does not load; skipped (see `taskbox profile check`)"
                );
                continue;
            };
            for g in &p.grants {
                rows.push(serde_json::json!({
                    "profile": format!("{}@{}", p.name, &p.digest()[..16]),
                    "grant": g.name,
                    "source": g.from.split(':').next().unwrap_or_default(),
                    "delivery": g.deliver.as_written(),
                    "to": g.to,
                    "ttl": g.ttl.map(|t| humantime::format_duration(t).to_string()),
                    "approval": if p.approval_required { "required" } else { "none" },
                }));
            }
            if p.identity {
                rows.push(serde_json::json!({
                    "profile": format!("{}@{}", p.name, &p.digest()[..16]),
                    "grant": "identity",
                    "source": "taskbox",
                    "delivery": "env:TASKBOX_IDENTITY_TOKEN",
                    "to": p.net.allow,
                    "ttl": null,
                    "approval": if p.approval_required { "required" } else { "none" },
                }));
            }
        }
        if json {
            for r in &rows {
                println!("{r}");
            }
            return Ok(0);
        }
        println!(
            "{:<24} {:<12} {:<8} {:<22} {:<10} {:<9} to",
            "profile", "grant", "source", "delivery", "ttl", "approval"
        );
        for r in &rows {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
            let to: Vec<String> = r["to"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "{:<24} {:<12} {:<8} {:<22} {:<10} {:<9} {}",
                s("profile"),
                s("grant"),
                s("source"),
                s("delivery"),
                s("ttl"),
                s("approval"),
                if to.is_empty() {
                    "-".to_owned()
                } else {
                    to.join(", ")
                }
            );
        }
        if rows.is_empty() {
            println!("(no profile grants a credential)");
        }
        Ok(0)
    }
}
