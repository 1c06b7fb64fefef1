//! `api-listing JSON...`: prints each rustdoc JSON file's public API, one item per line,
//! sorted (the text `api/check` compares with the checked-in listing).

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut status = ExitCode::SUCCESS;
    for path in std::env::args().skip(1) {
        match public_api::Builder::from_rustdoc_json(&path).build() {
            Ok(api) => {
                let mut out = std::io::stdout().lock();
                for item in api.items() {
                    if writeln!(out, "{item}").is_err() {
                        // The reader went away (a closed pipe): nothing more to say.
                        return status;
                    }
                }
            }
            Err(e) => {
                eprintln!("{path}: {e}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}
