//! A small Chrome DevTools Protocol client for the real-browser tests (browser.rs).
//!
//! It starts headless Chromium, opens pages, each in its own browser context and window, and
//! evaluates JavaScript in them. CDP is JSON over a WebSocket, so it runs over the blocking
//! `tungstenite` the project already has instead of a browser-automation crate (those cost
//! minutes of cold build). Methods used: `Target.createBrowserContext`, `Target.createTarget`,
//! `Target.attachToTarget` (flattened: every page session shares the browser's socket and is
//! named by a `sessionId` field), `Page.navigate` and `Runtime.evaluate`.
//!
//! Every wait is bounded by one deadline per browser (the harness timeout), so a wedged
//! browser fails the test instead of hanging CI. [`Browser`] is a guard: dropping it (also
//! while a test panics) kills Chromium's whole process group, waits for it, and removes the
//! temporary profile.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use simd_json::prelude::*;
use simd_json::{OwnedValue, json};
use tungstenite::{Message, WebSocket};

/// Debian's package: the browser itself, then its shell wrapper (which prints a harmless
/// `[: unexpected operator` line).
const INSTALLED: [&str; 2] = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"];

/// The browser to run: `$SIGNALING_CHROMIUM` if set (e.g. a preinstalled Chrome), else
/// Debian's Chromium if installed.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SIGNALING_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    INSTALLED.iter().map(PathBuf::from).find(|path| path.exists())
}

/// Flags for every run. Headless as root needs `--no-sandbox`. Chromium gathers 127.0.0.1
/// candidates only with `--allow-loopback-in-peer-connection` *and* camera permission, which
/// `--use-fake-ui-for-media-stream` grants (even if the page never asks for a camera). The
/// host resolver rule stops the start-up lookups of Google hosts (so pages use 127.0.0.1,
/// never `localhost`); the rest keeps the browser from reaching out or doing extra work.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--remote-debugging-port=0",
];

/// How long one socket read may block before the deadline is checked again.
const READ_SLICE: Duration = Duration::from_millis(200);

/// One headless Chromium and the CDP connection to it. Killed and cleaned up on drop.
pub struct Browser {
    child: Child,
    /// Holds `profile/` and `chromium.log` (Chromium's stdout and stderr: a file, because a
    /// pipe nobody drains would block it).
    dir: PathBuf,
    ws: Option<WebSocket<TcpStream>>,
    next_id: u64,
    /// Replies read while waiting for another one (pages are driven concurrently).
    replies: HashMap<u64, Result<OwnedValue, String>>,
    /// What each command still waiting for its reply was, for timeout messages.
    waiting: HashMap<u64, String>,
    /// Chromium exited and was reaped: its pid, and so its process group id, may be reused.
    reaped: bool,
    deadline: Instant,
}

/// A page in its own browser context, attached with a flattened session.
pub struct Page {
    pub label: String,
    session: String,
}

impl Browser {
    /// Starts `binary` with [`FLAGS`] plus `extra` flags and a fresh profile, and connects to
    /// it. Everything done through this browser must finish within `budget`.
    pub fn launch(binary: &Path, extra: &[&str], budget: Duration) -> Browser {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let deadline = Instant::now() + budget;
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("signaling-browser-{}-{run}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let profile = dir.join("profile");
        fs::create_dir_all(&profile).expect("create the browser profile directory");
        let log = File::create(dir.join("chromium.log")).expect("create the browser log");
        let child = Command::new(binary)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            // Its own process group, so the guard can kill the helper processes too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut browser = Browser {
            child,
            dir,
            ws: None,
            next_id: 1,
            replies: HashMap::new(),
            waiting: HashMap::new(),
            reaped: false,
            deadline,
        };
        let (port, path) = browser.devtools_endpoint(&profile);
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the DevTools port");
        stream.set_nodelay(true).expect("nodelay");
        // A blocking handshake (a timeout during it would abort it), then short reads so
        // that every wait can check the deadline.
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        let (ws, _) =
            tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream).expect("DevTools handshake");
        ws.get_ref().set_read_timeout(Some(READ_SLICE)).expect("read timeout");
        browser.ws = Some(ws);
        browser
    }

    /// With `--remote-debugging-port=0`, Chromium writes its port and the browser target's
    /// path to `<profile>/DevToolsActivePort` once it listens.
    fn devtools_endpoint(&mut self, profile: &Path) -> (u16, String) {
        let file = profile.join("DevToolsActivePort");
        loop {
            if let Ok(text) = fs::read_to_string(&file) {
                let mut lines = text.lines();
                let port = lines.next().and_then(|line| line.trim().parse().ok());
                let path = lines.next().map(str::trim).filter(|path| path.starts_with("/devtools/browser/"));
                if let (Some(port), Some(path)) = (port, path) {
                    return (port, path.to_owned());
                }
            }
            if let Some(status) = self.child.try_wait().expect("wait works") {
                self.reaped = true;
                panic!("Chromium exited at start-up ({status})");
            }
            self.check_deadline("Chromium to write DevToolsActivePort");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check_deadline(&self, waiting_for: &str) {
        assert!(Instant::now() < self.deadline, "harness timeout while waiting for {waiting_for}");
    }

    /// Opens `url` in a new window of a new browser context (separate contexts: a background
    /// tab's `<video>` stops advancing) and waits until the page has left `about:blank` and
    /// finished loading.
    pub fn open(&mut self, label: &str, url: &str) -> Page {
        let context = self.call(None, "Target.createBrowserContext", json!({}));
        let context = context.get_str("browserContextId").expect("browserContextId").to_owned();
        let target = self.call(
            None,
            "Target.createTarget",
            json!({"url": "about:blank", "browserContextId": context, "newWindow": true}),
        );
        let target = target.get_str("targetId").expect("targetId").to_owned();
        let attached = self.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        let session = attached.get_str("sessionId").expect("sessionId").to_owned();
        let page = Page { label: label.to_owned(), session };
        let navigated = self.call(Some(&page), "Page.navigate", json!({ "url": url }));
        if let Some(error) = navigated.get_str("errorText") {
            panic!("{label}: loading {url} failed: {error}");
        }
        self.wait_until(&page, "location.href !== 'about:blank' && document.readyState === 'complete'");
        page
    }

    /// Evaluates `condition` in the page until it is `true`. Evaluation errors count as not
    /// yet (the page may be between documents).
    fn wait_until(&mut self, page: &Page, condition: &str) {
        loop {
            let id = self.start_eval(page, condition);
            if self.finish_eval(id).is_ok_and(|value| value.as_bool() == Some(true)) {
                return;
            }
            self.check_deadline(&format!("{}: `{condition}`", page.label));
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts evaluating `expression` in the page (a promise is awaited; the value must be
    /// serialisable as JSON) and returns at once, so that several pages can run concurrently;
    /// [`Browser::finish_eval`] collects the result.
    pub fn start_eval(&mut self, page: &Page, expression: &str) -> u64 {
        self.send(
            Some(page),
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        )
    }

    /// The value of the evaluation `id`, or the JavaScript exception (or CDP error) as text.
    pub fn finish_eval(&mut self, id: u64) -> Result<OwnedValue, String> {
        let reply = self.reply(id)?;
        if let Some(details) = reply.get("exceptionDetails") {
            let description = details.get("exception").and_then(|e| e.get_str("description"));
            return Err(description.or_else(|| details.get_str("text")).unwrap_or("an exception").to_owned());
        }
        Ok(reply.get("result").and_then(|result| result.get("value")).cloned().unwrap_or(OwnedValue::null()))
    }

    fn call(&mut self, page: Option<&Page>, method: &str, params: OwnedValue) -> OwnedValue {
        let id = self.send(page, method, params);
        self.reply(id).unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    fn send(&mut self, page: Option<&Page>, method: &str, params: OwnedValue) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let message = match page {
            Some(page) => {
                json!({"id": id, "method": method, "params": params, "sessionId": page.session.as_str()})
            }
            None => json!({"id": id, "method": method, "params": params}),
        };
        let text = simd_json::to_string(&message).expect("a CDP message serialises");
        self.ws.as_mut().expect("connected").send(Message::text(text)).expect("send to Chromium");
        let what = match page {
            Some(page) => format!("{method} in {}'s page", page.label),
            None => method.to_owned(),
        };
        self.waiting.insert(id, what);
        id
    }

    /// Reads until the reply to `id` has arrived (events are ignored) or the deadline passes.
    fn reply(&mut self, id: u64) -> Result<OwnedValue, String> {
        loop {
            if let Some(reply) = self.replies.remove(&id) {
                self.waiting.remove(&id);
                return reply;
            }
            let what = self.waiting.get(&id).map_or("?", String::as_str);
            self.check_deadline(&format!("the reply to CDP command #{id} ({what})"));
            match self.ws.as_mut().expect("connected").read() {
                Ok(Message::Text(text)) => {
                    let message = simd_json::to_owned_value(&mut text.as_bytes().to_vec())
                        .unwrap_or_else(|e| panic!("Chromium sent invalid JSON ({e}): {text}"));
                    let Some(reply_id) = message.get_u64("id") else { continue };
                    let reply = match message.get("error") {
                        Some(error) => Err(simd_json::to_string(error).unwrap_or_default()),
                        None => Ok(message.get("result").cloned().unwrap_or_else(|| json!({}))),
                    };
                    self.replies.insert(reply_id, reply);
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("the DevTools connection failed: {e}"),
            }
        }
    }

    /// The last lines of Chromium's output, for failure messages, without the noise of a
    /// machine with no D-Bus and no sound card.
    fn log_tail(&self) -> String {
        let log = fs::read(self.dir.join("chromium.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let noise = ["dbus/", "ALSA lib "];
        let lines: Vec<&str> =
            log.lines().filter(|line| !noise.iter().any(|word| line.contains(word))).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Every failure (a timeout, a page error, a failed assertion) ends up here.
        if std::thread::panicking() {
            eprintln!("--- the last lines of Chromium's log ---\n{}\n---", self.log_tail());
        }
        self.ws = None;
        // While the leader is not reaped its process group id is ours: kill the whole group
        // (zygotes, renderers, utility processes), then reap the leader. The crashpad
        // handlers live in their own session and exit on their own once the browser is gone.
        if !self.reaped {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Helper processes may still be exiting and flushing into the profile: retry.
        let started = Instant::now();
        while fs::remove_dir_all(&self.dir).is_err()
            && self.dir.exists()
            && started.elapsed() < Duration::from_secs(3)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
