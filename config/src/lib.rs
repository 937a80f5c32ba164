//! hookfold-config: how the gateway and the processor read their configuration, in layers,
//! each over the one before:
//!
//! 1. the type's `Default`;
//! 2. the TOML file named (`--config` / `HOOKFOLD_CONFIG`), if any;
//! 3. every `HOOKFOLD_<KEY>` environment variable, `HOOKFOLD_<SECTION>__<KEY>` for a key in
//!    a section (`HOOKFOLD_KAFKA__BOOTSTRAP_SERVERS`), except the project's own variables
//!    ([`hookfold_proto::env::NOT_CONFIG_KEYS`]);
//!
//! then [`LayeredConfig::validate`], and in [`Mode::WithSecrets`] last
//! [`LayeredConfig::resolve_secrets`].
//!
//! Invariants: both modes validate the whole configuration, before any secret is read;
//! [`Mode::WithoutSecrets`] reads no secret (no password file, no variable that holds one),
//! so that what needs no credentials (the ACLs a configuration needs) works where there
//! are none; a file that is named but cannot be opened is an error that names it, never an
//! empty layer; an unknown key is the type's to refuse (`#[serde(deny_unknown_fields)]`).

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A configuration [`load`] can read: its defaults, its checks and its secrets.
pub trait LayeredConfig: Default + Serialize + DeserializeOwned {
    /// What is wrong with a configuration, in the configuration's own words.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Checks the configuration as a whole, without its secrets (they are not read yet,
    /// and in [`Mode::WithoutSecrets`] never are).
    fn validate(&self) -> Result<(), Self::Error>;

    /// Reads (and checks) the secrets the configuration names: variables through `env`,
    /// files directly.
    fn resolve_secrets(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Self::Error>;
}

/// Whether [`load`] reads the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything: what a binary that connects runs with.
    WithSecrets,
    /// Validated, but no secret read: enough to say which ACLs a configuration needs on a
    /// machine that holds none of the credentials.
    WithoutSecrets,
}

/// Why a configuration did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E: std::error::Error + 'static> {
    /// The file named cannot be opened.
    #[error("configuration file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A layer is not valid TOML, names an unknown key or has a value of the wrong type.
    #[error("reading configuration: {0}")]
    Read(#[from] Box<figment::Error>),
    /// [`LayeredConfig::validate`] refused it.
    #[error(transparent)]
    Invalid(E),
    /// [`LayeredConfig::resolve_secrets`] refused it.
    #[error(transparent)]
    Secrets(E),
}

/// `log_format`, the same key in both binaries: how log lines are written (the level
/// comes from `RUST_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Loads a `T`: defaults, then `file` (if any), then `HOOKFOLD_*` environment variables,
/// validated; in [`Mode::WithSecrets`] with its secrets read from the process's
/// environment and files.
pub fn load<T: LayeredConfig>(file: Option<&Path>, mode: Mode) -> Result<T, LoadError<T::Error>> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        // Figment's own message for a missing file does not say which file.
        std::fs::File::open(path).map_err(|source| LoadError::File {
            path: path.to_owned(),
            source,
        })?;
        figment = figment.merge(Toml::file_exact(path));
    }
    let mut config: T = figment
        // HOOKFOLD_CONFIG names the file (--config); the scripts' own variables are not
        // keys either.
        .merge(
            Env::prefixed("HOOKFOLD_")
                .ignore(hookfold_proto::env::NOT_CONFIG_KEYS)
                .split("__"),
        )
        .extract()
        .map_err(Box::new)?;
    config.validate().map_err(LoadError::Invalid)?;
    if mode == Mode::WithSecrets {
        config
            .resolve_secrets(&|name| std::env::var(name).ok())
            .map_err(LoadError::Secrets)?;
    }
    Ok(config)
}

/// The type's defaults with `text` (TOML) over them: no file, no environment, not
/// validated, no secret read. For tests of a configuration's own checks.
pub fn parse_toml<T: LayeredConfig>(text: &str) -> Result<T, LoadError<T::Error>> {
    Ok(Figment::from(Serialized::defaults(T::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(Box::new)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io::Write;
    use std::process::Command;

    /// A configuration of the loader's own, with a section and a secret.
    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        name: String,
        port: u16,
        section: Section,
        secret_env: Option<String>,
        #[serde(skip)]
        secret: Option<String>,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Section {
        key: String,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Problem(String);

    thread_local! {
        /// How often this thread's loads asked for a secret.
        static SECRET_LOOKUPS: Cell<usize> = const { Cell::new(0) };
    }

    impl LayeredConfig for Sample {
        type Error = Problem;

        fn validate(&self) -> Result<(), Problem> {
            if self.port == 0 {
                return Err(Problem("port must be above 0".into()));
            }
            Ok(())
        }

        fn resolve_secrets(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Problem> {
            SECRET_LOOKUPS.with(|n| n.set(n.get() + 1));
            if let Some(name) = &self.secret_env {
                let value = env(name).ok_or_else(|| Problem(format!("`{name}` is not set")))?;
                self.secret = Some(value);
            }
            Ok(())
        }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
        file.write_all(text.as_bytes()).expect("writing it");
        file
    }

    /// Set in the child run of [`the_environment_overrides_the_file`]: the file to load.
    const CHILD_FILE: &str = "CONFIG_LOADER_TEST_FILE";

    /// Environment variables belong to the whole process, and setting one while other
    /// tests run is unsound: the load with them runs in a child run of this test binary
    /// ([`loads_in_the_environment_it_is_given`]), whose environment is set at its start.
    #[test]
    fn the_environment_overrides_the_file() {
        let file = write("name = \"from-file\"\nport = 1\n[section]\nkey = \"from-file\"\n");
        let mut child = Command::new(std::env::current_exe().expect("the test binary"));
        child.args([
            "--exact",
            "tests::loads_in_the_environment_it_is_given",
            "--ignored",
            "--test-threads=1",
        ]);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HOOKFOLD_") {
                child.env_remove(name);
            }
        }
        let output = child
            .env(CHILD_FILE, file.path())
            .env("HOOKFOLD_NAME", "from-env")
            .env("HOOKFOLD_SECTION__KEY", "from-env")
            .output()
            .expect("running the test binary again");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    #[ignore = "run by the_environment_overrides_the_file, in the environment it sets up"]
    fn loads_in_the_environment_it_is_given() {
        let Some(path) = std::env::var_os(CHILD_FILE) else {
            return;
        };
        let config: Sample = load(Some(Path::new(&path)), Mode::WithSecrets).expect("it loads");
        assert_eq!(config.name, "from-env");
        assert_eq!(config.section.key, "from-env");
        // What the environment does not set stays as the file has it.
        assert_eq!(config.port, 1);
    }

    #[test]
    fn a_missing_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("surely-missing.toml");
        let err = load::<Sample>(Some(&path), Mode::WithoutSecrets).unwrap_err();
        assert!(matches!(err, LoadError::File { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("No such file"),
            "{message}"
        );
    }

    #[test]
    fn a_file_that_is_not_toml_is_a_read_error() {
        let file = write("port = = 1");
        let err = load::<Sample>(Some(file.path()), Mode::WithoutSecrets).unwrap_err();
        assert!(matches!(err, LoadError::Read(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("reading configuration: "),
            "{err}"
        );
    }

    #[test]
    fn without_secrets_validates_but_reads_no_secret() {
        let secret = "secret_env = \"HOOKFOLD_CONFIG_TEST_SURELY_UNSET\"\n";
        SECRET_LOOKUPS.with(|n| n.set(0));

        let invalid = write(&format!("port = 0\n{secret}"));
        let err = load::<Sample>(Some(invalid.path()), Mode::WithoutSecrets).unwrap_err();
        assert!(matches!(err, LoadError::Invalid(_)), "{err:?}");
        assert_eq!(err.to_string(), "port must be above 0");

        // Valid, and its secret is never looked for: no error for the unset variable.
        let valid = write(&format!("port = 1\n{secret}"));
        let config = load::<Sample>(Some(valid.path()), Mode::WithoutSecrets).expect("it loads");
        assert_eq!(config.secret, None);
        assert_eq!(SECRET_LOOKUPS.with(Cell::get), 0);

        // With secrets, the same file fails on that variable, after validation.
        let err = load::<Sample>(Some(valid.path()), Mode::WithSecrets).unwrap_err();
        assert!(matches!(err, LoadError::Secrets(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("HOOKFOLD_CONFIG_TEST_SURELY_UNSET"),
            "{err}"
        );
        assert_eq!(SECRET_LOOKUPS.with(Cell::get), 1);
        let err = load::<Sample>(Some(invalid.path()), Mode::WithSecrets).unwrap_err();
        assert!(matches!(err, LoadError::Invalid(_)), "{err:?}");
        assert_eq!(
            SECRET_LOOKUPS.with(Cell::get),
            1,
            "validated before any secret"
        );
    }

    #[test]
    fn parse_toml_lays_the_text_over_the_defaults() {
        let config: Sample = parse_toml("port = 7").expect("it parses");
        assert_eq!((config.port, config.name.as_str()), (7, ""));
        assert!(parse_toml::<Sample>("port = \"x\"").is_err());
    }
}
