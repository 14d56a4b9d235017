//! A loopback HTTP endpoint a test flips between healthy and failing: an `http` check
//! aimed at it fails on one service at the test's word.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A loopback HTTP endpoint answering 200 while `healthy`, 500 otherwise: a check the test
/// can make fail on one member at will.
pub struct Switch {
    healthy: Arc<AtomicBool>,
    pub port: u16,
}

impl Switch {
    pub fn start() -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let status = if flag.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Switch { healthy, port }
    }

    pub fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }
}
