//! deploy/ cannot rot: `scripts/validate-deploy.sh` lints the Dockerfile and every YAML
//! file, renders the kustomization, validates each Kubernetes object (strictly, against
//! several Kubernetes versions) and the compose file against their schemas, cross-checks
//! ports, probes, references and volumes, and runs the real binaries' configuration checks
//! on every configuration the manifests embed, with the environment each container gets.
//! Needs no broker and no cluster; the first run installs the pinned tools from PyPI into
//! ~/.cache/hookfold/venv.

use std::process::Command;

use hookfold_tests::workspace_binary;

#[test]
fn deploy_artifacts_are_valid() {
    let root = hookfold_tests::manifest_dir().join("..");
    // The binaries of this very build (target/<profile>), like every other test here.
    let gateway = workspace_binary("hookfold-gateway");
    workspace_binary("hookfold-processor");
    let bin_dir = gateway.parent().expect("target/<profile>");

    let output = Command::new("bash")
        .arg(root.join("scripts/validate-deploy.sh"))
        .current_dir(&root)
        .env("HOOKFOLD_BIN_DIR", bin_dir)
        .env_remove("HOOKFOLD_VALIDATE_SKIP_BINARIES")
        .output()
        .expect("running scripts/validate-deploy.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "scripts/validate-deploy.sh failed ({}); its output:\n{text}",
        output.status
    );
}
