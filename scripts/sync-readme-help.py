#!/usr/bin/env python3
"""Replaces the --help block in README.md with the binary's current --help output.

Run after changing a flag: `cargo build && scripts/sync-readme-help.py` (a test,
lifecycle::the_readme_shows_the_current_help, fails until the two agree)."""
import pathlib, subprocess, sys

root = pathlib.Path(__file__).resolve().parent.parent
binary = sys.argv[1] if len(sys.argv) > 1 else str(root / "target/debug/signaling-server")
help_text = subprocess.run([binary, "--help"], check=True, capture_output=True, text=True).stdout
readme = (root / "README.md").read_text()
start = readme.index("```text\nsignaling-server: a WebRTC") + len("```text\n")
end = start + readme[start:].index("```")
(root / "README.md").write_text(readme[:start] + help_text + readme[end:])
