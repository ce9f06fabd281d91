//! Models by name, the config file and roles, as a user meets them: `convert` without `-o`
//! puts the model in the models folder, `list` shows it (checked against llama.cpp's parameter
//! count and the checkpoint's config), `run`/`chat` take its name, a config file sets defaults
//! under the flags, `rm` deletes it.

use std::path::Path;
use std::process::{Command, Output};

use crate::common;
use dscoder::engine::{Engine, EngineSettings};

/// `dscoder ARGS` with `home` as the models folder's parent and its config file, stdin `input`.
fn dscoder(home: &Path, args: &[&str], input: &str) -> Output {
    let mut cmd: Command = common::dscoder();
    cmd.env("DSCODER_MODELS", home.join("models"))
        .env("DSCODER_CONFIG", home.join("config.toml"))
        .args(args);
    common::output_with_stdin(&mut cmd, input)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn convert_into_the_models_folder_then_list_run_by_name_and_rm() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let fixture = common::fixture("lite-tiny");

    let o = dscoder(home, &["list"], "");
    assert!(o.status.success());
    assert!(
        text(&o.stderr).contains("No models in"),
        "{}",
        text(&o.stderr)
    );

    let o = dscoder(
        home,
        &["convert", fixture.to_str().unwrap(), "--type", "q8_0"],
        "",
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr)
            .contains("Saved in the models folder as lite-tiny-q8_0: dscoder chat lite-tiny-q8_0"),
        "{}",
        text(&o.stderr)
    );
    let path = home.join("models/lite-tiny-q8_0.gguf");
    assert!(path.is_file());

    // The listing: type, parameters as llama.cpp counts them, the trained context from the
    // checkpoint's config.json.
    let o = dscoder(home, &["list"], "");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let row = out
        .lines()
        .find(|l| l.starts_with("lite-tiny-q8_0 "))
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "q8_0", "{row}");
    let engine = Engine::load(&path, EngineSettings::default()).unwrap();
    let params = engine
        .describe()
        .into_iter()
        .find(|(k, _)| *k == "parameters")
        .unwrap()
        .1;
    assert_eq!(cols[4], params, "{row}");
    let config = common::json(&fixture.join("config.json"));
    assert_eq!(
        cols[5],
        config["max_position_embeddings"].to_string(),
        "{row}"
    );

    // By name, with or without .gguf; and as the default (the newest in the folder).
    for model in ["lite-tiny-q8_0", "lite-tiny-q8_0.gguf"] {
        let o = dscoder(
            home,
            &["run", model, "-p", "hi", "-n", "2", "--temp", "0"],
            "",
        );
        assert!(o.status.success(), "{model}: {}", text(&o.stderr));
    }
    let named = dscoder(
        home,
        &["run", "lite-tiny-q8_0", "hi", "-n", "3", "--temp", "0"],
        "",
    );
    let default = dscoder(home, &["run", "hi", "-n", "3", "--temp", "0"], "");
    assert!(default.status.success(), "{}", text(&default.stderr));
    assert!(
        text(&default.stderr).contains("the newest in the models folder"),
        "{}",
        text(&default.stderr)
    );
    assert_eq!(named.stdout, default.stdout);

    // An unknown name says what there is.
    let o = dscoder(home, &["run", "nosuch", "-p", "hi"], "");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr)
            .contains("no file or model named 'nosuch'; the models folder has: lite-tiny-q8_0"),
        "{}",
        text(&o.stderr)
    );

    // rm: only names from the folder, all checked before anything is deleted.
    for bad in ["../models/lite-tiny-q8_0", "nosuch"] {
        let o = dscoder(home, &["rm", "lite-tiny-q8_0", bad], "");
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert!(path.is_file(), "rm deleted something before refusing {bad}");
    }
    let o = dscoder(home, &["rm", "lite-tiny-q8_0"], "");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("deleted "), "{}", text(&o.stderr));
    assert!(!path.exists());
    let o = dscoder(home, &["list"], "");
    assert!(
        text(&o.stderr).contains("No models in"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn the_config_file_sets_defaults_under_the_flags_and_names_roles() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let model = common::converted(&common::fixture("lite-tiny"), "q8_0");
    let m = model.to_str().unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!(
            "model = {m:?}\ntemp = 0.3\nmax_tokens = 7\ncache_type = \"q8_0\"\n\n[roles]\nsql = \"You write SQL.\"\n"
        ),
    )
    .unwrap();

    // No model given: the config's. Its settings apply; a flag wins over the file.
    let o = dscoder(
        home,
        &["chat", "--color", "never"],
        "/show settings\n/show info\n/exit\n",
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("the config file's default"), "{err}");
    assert!(
        err.contains("temp = 0.3") && err.contains("max_tokens = 7"),
        "{err}"
    );
    assert!(err.contains("KV cache    q8_0"), "{err}");
    let o = dscoder(
        home,
        &["chat", m, "--temp", "0.6"],
        "/show settings\n/exit\n",
    );
    let err = text(&o.stderr);
    assert!(
        err.contains("temp = 0.6") && err.contains("max_tokens = 7"),
        "{err}"
    );

    // Roles: from the file, built in, listed, and switched with /role.
    let o = dscoder(
        home,
        &["chat", m, "--role", "sql"],
        "/show prompt\n/role\n/role tester\n/show prompt\n/role poet\n/exit\n",
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(out.contains("You write SQL."), "{out}");
    assert!(out.contains("You write unit tests."), "{out}");
    for role in ["explainer", "reviewer", "sql", "tester"] {
        assert!(
            err.contains(&format!("  {role} ")),
            "{role} not listed: {err}"
        );
    }
    assert!(err.contains("no role named 'poet'"), "{err}");

    // `dscoder config` shows each value and where it came from.
    let o = dscoder(home, &["config"], "");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .to_string()
    };
    assert!(
        line("temp").contains("0.3") && line("temp").contains("# config file"),
        "{out}"
    );
    assert!(
        line("top_k").contains("40") && line("top_k").ends_with("# default"),
        "{out}"
    );
    assert!(line("cache_type").contains("q8_0"), "{out}");
    assert!(out.contains("sql = ") && out.contains("tester = "), "{out}");

    // A bad value names the file and the key; a typo'd key is refused, not ignored.
    for (config, want) in [
        ("temp = 9.0\n", "temp"),
        ("threads = 0\n", "threads"),
        ("cache_type = \"q4\"\n", "cache_type"),
        ("temperature = 0.2\n", "temperature"),
    ] {
        std::fs::write(home.join("config.toml"), config).unwrap();
        let o = dscoder(home, &["chat", m], "/exit\n");
        assert_eq!(o.status.code(), Some(1), "{config}");
        let err = text(&o.stderr);
        assert!(
            err.contains("config.toml") && err.contains(want),
            "{config}: {err}"
        );
    }
    // Commands that do not run a model do not read it.
    let o = dscoder(home, &["info", m], "");
    assert!(o.status.success(), "{}", text(&o.stderr));
}
