//! What one client sends a server, read with `MONITOR`: shared by the tests
//! that count round trips (`cache_aside.rs` on one node, `cluster.rs`).

/// What one client sends a server, read with `MONITOR` on a raw connection:
/// each request a line, the commands scripts run inside (`[0 lua]`) left out.
pub struct Monitor {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _reader: std::thread::JoinHandle<()>,
}

impl Monitor {
    pub fn start(port: u16) -> Monitor {
        use std::io::{BufRead, BufReader, Write};
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect for MONITOR");
        socket.write_all(b"MONITOR\r\n").expect("send MONITOR");
        let mut reader = BufReader::new(socket);
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR answered");
        assert_eq!(ok.trim_end(), "+OK");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        let _reader = std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if !line.contains(" lua]") {
                    sink.lock().unwrap().push(line);
                }
            }
        });
        Monitor { lines, _reader }
    }

    /// The requests seen so far that name `fragment` (a key, or an argument).
    pub fn requests_naming(&self, fragment: &str) -> Vec<String> {
        let quoted = format!("\"{fragment}");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(&quoted) || line.contains(&format!(":{fragment}")))
            .cloned()
            .collect()
    }
}
