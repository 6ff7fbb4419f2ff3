//! What the lab prints for people: progress lines, colours only on a terminal.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Out {
    colour: bool,
    started: Instant,
}

impl Default for Out {
    fn default() -> Self {
        Out::new()
    }
}

impl Out {
    pub fn new() -> Out {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Out { colour, started: Instant::now() }
    }

    pub fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    pub fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    fn line(&self, mark: &str, text: &str) {
        let t = format!("{:>6.1}s", self.started.elapsed().as_secs_f64());
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{} {mark} {text}", self.dim(&t));
        let _ = stdout.flush();
    }

    /// A section heading.
    pub fn heading(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "\n{}", self.bold(&format!("== {text}")));
    }

    /// Something starting.
    pub fn step(&self, text: &str) {
        self.line(&self.yellow("…"), text);
    }

    pub fn ok(&self, text: &str) {
        self.line(&self.green("✓"), text);
    }

    pub fn warn(&self, text: &str) {
        self.line(&self.red("!"), text);
    }

    pub fn info(&self, text: &str) {
        self.line(" ", text);
    }

    /// Text as it is (tables, command output).
    pub fn raw(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "{text}");
        if !text.ends_with('\n') {
            let _ = writeln!(stdout);
        }
    }
}
