//! The case files under tests/cmd/: usage, help and error output of the real binary, with
//! exit codes. Each `*.toml` case runs `conduit` in a fresh temporary directory
//! (`fs.sandbox = true`) with `CONDUIT_HOME=home` inside it, so nothing is written
//! outside temporary directories. Regenerate the expected output after an intended change
//! with `TRYCMD=overwrite cargo test --test cli cmd_cases`, then read the diff.

#[test]
fn cmd_cases() {
    trycmd::TestCases::new()
        .register_bin(
            "conduit",
            std::path::Path::new(env!("CARGO_BIN_EXE_conduit")),
        )
        .env("CONDUIT_HOME", "home")
        .env("NO_COLOR", "1")
        .case("tests/cmd/*.toml")
        .case("tests/cmd/*.trycmd");
}
