//! `taskbox profile ...`: list, show, explain, check, diff, schema.

use std::path::PathBuf;

use crate::profile::{self, Origin};

/// Profile commands.
#[derive(Debug, clap::Subcommand)]
pub enum ProfileCmd {
    /// List every profile taskbox can load.
    List,
    /// Print a profile's TOML layers (root first).
    Show {
        /// Profile name or path.
        name: String,
    },
    /// Explain a profile's effective permissions in plain words.
    Explain {
        /// Profile name or path.
        name: String,
        /// Print the merged profile as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Validate profile files; errors name file, line, column and field.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what one profile grants that the other does not.
    Diff {
        /// First profile.
        a: String,
        /// Second profile.
        b: String,
    },
    /// Print the JSON Schema of a profile file, for editors.
    Schema,
}

impl ProfileCmd {
    /// Runs the command.
    pub fn execute(self) -> anyhow::Result<i32> {
        match self {
            ProfileCmd::List => {
                for (name, origin) in super::catalog().list()? {
                    let p = super::load(&name);
                    let desc = p
                        .as_ref()
                        .map_or_else(|e| format!("INVALID: {e}"), |p| p.description.clone());
                    let from = match origin {
                        Origin::Builtin(_) => "built-in".to_owned(),
                        Origin::File(path) => path.display().to_string(),
                    };
                    println!("{name:<16} {from:<10} {desc}");
                }
                Ok(0)
            }
            ProfileCmd::Show { name } => {
                let p = super::load(&name)?;
                let cat = super::catalog();
                for layer in &p.chain {
                    let text = match profile::BUILTINS.iter().find(|(n, _)| n == layer) {
                        Some((_, t)) => (*t).to_owned(),
                        None => match &p.origin {
                            Origin::File(path) if *layer == p.name => {
                                std::fs::read_to_string(path)?
                            }
                            _ => {
                                let dir = cat.user_dir().map(|d| d.join(format!("{layer}.toml")));
                                dir.map(std::fs::read_to_string)
                                    .transpose()?
                                    .unwrap_or_default()
                            }
                        },
                    };
                    println!("# ---- {layer} ----");
                    print!("{text}");
                }
                Ok(0)
            }
            ProfileCmd::Explain { name, json } => {
                let p = super::load(&name)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&p)?);
                } else {
                    print!("{}", profile::explain(&p));
                }
                Ok(0)
            }
            ProfileCmd::Check { files } => {
                let mut bad = 0;
                for f in files {
                    match super::load(&f.to_string_lossy()) {
                        Ok(p) => println!(
                            "{}: ok ({} -> digest {})",
                            f.display(),
                            p.chain.join(" -> "),
                            &p.digest()[..16]
                        ),
                        Err(e) => {
                            eprintln!("{e}");
                            bad += 1;
                        }
                    }
                }
                Ok(if bad > 0 {
                    crate::action::EXIT_TASKBOX
                } else {
                    0
                })
            }
            ProfileCmd::Diff { a, b } => {
                print!("{}", profile::diff(&super::load(&a)?, &super::load(&b)?));
                Ok(0)
            }
            ProfileCmd::Schema => {
                println!("{}", serde_json::to_string_pretty(&profile::schema())?);
                Ok(0)
            }
        }
    }
}
