set -e
cd "$(git rev-parse --show-toplevel)"
export CARGO_TARGET_DIR=/tmp/cold-candle
rm -rf "$CARGO_TARGET_DIR"
t0=$SECONDS
cargo clippy -q -p kfac-core --all-targets -- -D warnings
cargo test -q -p kfac-core --no-run
RUSTDOCFLAGS="-D warnings" cargo doc -q -p kfac-core --no-deps
t1=$SECONDS
echo "shared part (kfac-core clippy, test build, doc): $((t1-t0)) s"
cargo clippy -q -p kfac-candle --all-targets -- -D warnings
cargo test -q -p kfac-candle 2>&1 | grep "test result" 
RUSTDOCFLAGS="-D warnings" cargo doc -q -p kfac-candle --no-deps
t2=$SECONDS
echo "kfac-candle section on top of it: $((t2-t1)) s"
du -sh "$CARGO_TARGET_DIR"
