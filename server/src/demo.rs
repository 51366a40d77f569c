//! The built-in demo: a private copy of the bundled `demo/` folder with a bundle that a newcomer
//! can "rebuild" from the page, so that the next sync visibly costs kilobytes.
//!
//! `js/app.js` is made the way a bundler would: a banner with the build number, the real vendor
//! libraries from `js/vendor/`, then a small app module. A rebuild changes the banner and the app
//! module and leaves the vendor code alone, as most real rebuilds do.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// The demo's bundle, relative to the demo root.
pub const BUNDLE: &str = "js/app.js";

const VENDOR: [&str; 4] =
    ["react.development.js", "react-dom.development.js", "lodash.js", "three.module.js"];

/// A temporary copy of the demo folder (its `site/`) and the server's version store (its
/// `store/`), deleted on drop.
#[derive(Debug)]
pub struct Demo {
    dir: tempfile::TempDir,
    build: Mutex<u32>,
    /// The secret that lets the demo page save edits to the private copy (`GET /demo/token`).
    write_token: String,
}

/// What a rebuild produced.
#[derive(Debug, Serialize)]
pub struct Build {
    /// Build number, starting at 1.
    pub build: u32,
    /// The bundle's path relative to the root.
    pub asset: &'static str,
    /// The bundle's size.
    pub bytes: usize,
}

impl Demo {
    /// Copies `bundled` (the repository's `demo/` folder) and the demo page's `www` (its HTML,
    /// script, style and built client) to a temporary folder and writes build 1: the page is
    /// part of the build, so that its service worker can serve all of it offline.
    pub fn prepare(bundled: &Path, www: Option<&Path>) -> io::Result<Demo> {
        let dir = tempfile::Builder::new().prefix("assetsync-demo-").tempdir()?;
        copy_dir(bundled, &dir.path().join("site"))?;
        if let Some(www) = www {
            copy_dir(www, &dir.path().join("site"))?;
        }
        let demo = Demo { dir, build: Mutex::new(0), write_token: made_up_secret() };
        demo.rebuild()?;
        Ok(demo)
    }

    /// The secret for uploads to the private copy, made up for this run, handed to the demo page
    /// by `GET /demo/token` (the server listens on loopback by default; see `serve --listen`).
    pub fn write_token(&self) -> &str {
        &self.write_token
    }

    /// The folder to serve.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("site")
    }

    /// The version store's folder, beside the served one.
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The current build.
    pub fn current(&self) -> Build {
        let build = *self.build.lock().expect("poisoned");
        let bytes = std::fs::metadata(self.root().join(BUNDLE)).map_or(0, |m| m.len() as usize);
        Build { build, asset: BUNDLE, bytes }
    }

    /// Writes the next build of the bundle (atomically: temp file, then rename).
    pub fn rebuild(&self) -> io::Result<Build> {
        let mut build = self.build.lock().expect("poisoned");
        let next = *build + 1;
        let mut bundle = format!("/*! assetsync demo bundle, build {next} */\n").into_bytes();
        for name in VENDOR {
            bundle.extend_from_slice(format!("\n// ---- vendor/{name}\n").as_bytes());
            bundle.extend_from_slice(&std::fs::read(self.root().join("js/vendor").join(name))?);
        }
        bundle.extend_from_slice(app_module(next).as_bytes());
        // Through a temporary file that the watcher and index ignore (`.tmp`), renamed into
        // place: readers see the old build or the whole new one.
        let path = self.root().join(BUNDLE);
        let mut tmp =
            tempfile::Builder::new().suffix(".tmp").tempfile_in(path.parent().expect("in a folder"))?;
        tmp.write_all(&bundle)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        *build = next;
        Ok(Build { build: next, asset: BUNDLE, bytes: bundle.len() })
    }
}

/// The app's own code: a few kilobytes that change on every build.
fn app_module(build: u32) -> String {
    let mut out = format!(
        "\n// ---- app\nexport const BUILD = {build};\nglobalThis.assetsyncDemo = {{ build: BUILD }};\n"
    );
    for i in 0..40 {
        out.push_str(&format!(
            "export function widget{i}(props) {{\n  const label = \"widget {i} of build {build}\";\n  \
             return {{ id: {}, label, props, at: {} }};\n}}\n",
            i * 7919 + build,
            build * 1000 + i
        ));
    }
    out
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A secret for this run only, from the standard library's random hash keys (128 bits).
fn made_up_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{:016x}{:016x}", half(), half())
}
