//! tokio_echo: the idiomatic tokio echo server, on one thread.
//!
//! One task per connection: read into a 64 KiB buffer, `write_all` it back.
//! Backpressure is implicit (no read while a write waits). This is the shape
//! the tokio tutorial teaches; it is the "idiomatic async Rust" column of
//! bench/compare, not a tuned server.
//!
//! Usage: tokio_echo [--port P] [--bind IP]; prints
//! "tokio_echo listening on IP:PORT" on stderr when ready.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "../args.rs"]
mod args;

async fn serve(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn main() -> std::io::Result<()> {
    let (bind, port) = args::bind_and_port("tokio_echo");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::new(bind, port)).await?;
        eprintln!("tokio_echo listening on {}", listener.local_addr()?);
        // SIGTERM (how bench/compare stops it) ends the process as is.
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
        }
    })
}
