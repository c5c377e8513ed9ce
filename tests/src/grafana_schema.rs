//! Checks a Grafana dashboard against Grafana's own published schema: the
//! `@grafana/schema` npm package (the TypeScript types Grafana generates from
//! its dashboard and panel-plugin schemas), compiled with `tsc --strict`.
//! The dashboard JSON becomes object literals typed as `Dashboard`, each panel
//! as `Panel`/`RowPanel`, and each panel's `options` and `fieldConfig.defaults
//! .custom` as the plugin's `Options`/`FieldConfig`: an unknown key, a missing
//! required one or a value outside an enum is a compile error. Enums are
//! compared by value (`Json<T>` turns string enums into their literals, as in
//! the JSON Grafana reads).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Exact versions: the check must not change under the test's feet.
const PACKAGE_JSON: &str = r#"{
  "private": true,
  "description": "Grafana's dashboard schema types and the TypeScript compiler, for the dashboard test",
  "dependencies": {
    "@grafana/schema": "13.2.3",
    "typescript": "5.9.3"
  }
}
"#;

/// Panel types the dashboard uses: (type, the plugin's module name, whether
/// the plugin declares a custom `FieldConfig`).
const PANEL_TYPES: &[(&str, &str, bool)] = &[
    ("timeseries", "TimeSeries", true),
    ("table", "Table", true),
    ("stat", "Stat", false),
];

/// Installs the packages into `dir` with `npm install` unless the same
/// versions are there already; returns the compiler's entry point.
pub fn ensure_installed(dir: &Path) -> Result<PathBuf> {
    let tsc = dir.join("node_modules/typescript/bin/tsc");
    let manifest = dir.join("package.json");
    let current = std::fs::read_to_string(&manifest).unwrap_or_default();
    if current == PACKAGE_JSON && tsc.is_file() {
        return Ok(tsc);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&manifest, PACKAGE_JSON)
        .with_context(|| format!("writing {}", manifest.display()))?;
    let out = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
        ])
        .current_dir(dir)
        .output()
        .context("cannot run npm (apt-get install npm; cargo xtask test installs it)")?;
    if !out.status.success() || !tsc.is_file() {
        bail!(
            "npm install in {} failed ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(tsc)
}

/// The TypeScript module that types every part of `dashboard`.
pub fn typescript_source(dashboard: &Value) -> Result<String> {
    let mut ts =
        String::from("import type { Dashboard, Panel, RowPanel } from '@grafana/schema';\n");
    for (kind, module, _) in PANEL_TYPES {
        ts += &format!(
            "import type * as {kind} from '@grafana/schema/dist/esm/raw/composable/{kind}/panelcfg/x/{module}PanelCfg_types.gen';\n"
        );
    }
    ts += "type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T\n  : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;\n";
    ts += &format!(
        "export const dashboard: Json<Dashboard> = {};\n",
        pretty(dashboard)
    );
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels array")?;
    for (i, panel) in panels.iter().enumerate() {
        let kind = panel["type"].as_str().unwrap_or_default();
        if kind == "row" {
            ts += &format!(
                "export const panel{i}: Json<RowPanel> = {};\n",
                pretty(panel)
            );
            continue;
        }
        let Some((_, _, custom)) = PANEL_TYPES.iter().find(|(k, _, _)| *k == kind) else {
            bail!(
                "panel {i} ({}): type {kind:?} has no schema import here (add it to PANEL_TYPES)",
                panel["title"]
            );
        };
        ts += &format!("export const panel{i}: Json<Panel> = {};\n", pretty(panel));
        ts += &format!(
            "export const options{i}: Json<{kind}.Options> = {};\n",
            pretty(&panel["options"])
        );
        if *custom {
            let value = &panel["fieldConfig"]["defaults"]["custom"];
            let value = if value.is_null() {
                &Value::Object(Default::default())
            } else {
                value
            };
            ts += &format!(
                "export const custom{i}: Json<{kind}.FieldConfig> = {};\n",
                pretty(value)
            );
        }
    }
    Ok(ts)
}

/// Compiles `dashboard`'s module in `dir` (where [`ensure_installed`] put
/// the packages): `Err` with the compiler's messages when it does not type.
pub fn check(dir: &Path, tsc: &Path, name: &str, dashboard: &Value) -> Result<()> {
    let (ok, messages) = compile(dir, tsc, &[(name, dashboard)])?;
    if !ok {
        bail!(
            "{name} does not match Grafana's schema (lines refer to {}):\n{messages}",
            dir.join(format!("{name}.ts")).display()
        );
    }
    Ok(())
}

/// Compiles several dashboards' modules in one run of the compiler:
/// (whether all typed, the compiler's messages, each prefixed `NAME.ts(`).
pub fn compile(dir: &Path, tsc: &Path, dashboards: &[(&str, &Value)]) -> Result<(bool, String)> {
    let mut files = Vec::new();
    for (name, dashboard) in dashboards {
        let file = format!("{name}.ts");
        std::fs::write(dir.join(&file), typescript_source(dashboard)?)
            .with_context(|| format!("writing {}", dir.join(&file).display()))?;
        files.push(file);
    }
    let out = Command::new("node")
        .arg(tsc)
        .args([
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--pretty",
            "false",
            "--target",
            "es2022",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
        ])
        .args(&files)
        .current_dir(dir)
        .output()
        .context("cannot run node")?;
    let messages = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), messages))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
