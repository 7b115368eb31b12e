//! Load generator for the engine. Not built yet: the open-loop harness lands with its own issue.
fn main() {
    eprintln!("bench-harness: not built yet; use `engine ping` to measure round trips");
    std::process::exit(2);
}
