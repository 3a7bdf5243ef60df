//! tokio_chat: a chat relay in idiomatic tokio, on one thread, speaking
//! sockloop's framing: a 2-byte big-endian length, then that many bytes; a
//! frame of length 0 closes the sender.
//!
//! Every frame is relayed unchanged to every other client, as one shared
//! buffer (`Rc<[u8]>`, one allocation per frame whatever the fan-out). Each
//! client has a reader task and a writer task; the writer drains its queue
//! into a 64 KiB buffered writer and flushes when the queue is momentarily
//! empty. Bounded: a client whose queued bytes would pass 1 MiB is
//! disconnected (sockloop's chat default for --max-backlog).
//!
//! Usage: tokio_chat [--port P] [--bind IP]; prints
//! "tokio_chat listening on IP:PORT" on stderr when ready.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[path = "../args.rs"]
mod args;

/// Most bytes queued for one client before it is disconnected.
const MAX_BACKLOG: usize = 1 << 20;

struct Client {
    queue: mpsc::UnboundedSender<Rc<[u8]>>,
    /// Bytes queued and not yet written, shared with the writer task.
    queued: Rc<RefCell<usize>>,
}

type Room = Rc<RefCell<HashMap<u64, Client>>>;

fn relay(room: &Room, from: u64, frame: Rc<[u8]>) {
    let mut slow = Vec::new();
    for (id, client) in room.borrow().iter() {
        if *id == from {
            continue;
        }
        let mut queued = client.queued.borrow_mut();
        if *queued + frame.len() > MAX_BACKLOG || client.queue.send(frame.clone()).is_err() {
            slow.push(*id);
        } else {
            *queued += frame.len();
        }
    }
    let mut room = room.borrow_mut();
    for id in slow {
        room.remove(&id);
    }
}

async fn writer(
    half: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Rc<[u8]>>,
    queued: Rc<RefCell<usize>>,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, half);
    while let Some(frame) = queue.recv().await {
        let mut next = Some(frame);
        while let Some(frame) = next {
            if out.write_all(&frame).await.is_err() {
                return;
            }
            *queued.borrow_mut() -= frame.len();
            next = queue.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
}

async fn serve(stream: TcpStream, id: u64, room: Room) {
    let (read_half, write_half) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Rc::new(RefCell::new(0));
    room.borrow_mut().insert(
        id,
        Client {
            queue: tx,
            queued: queued.clone(),
        },
    );
    tokio::task::spawn_local(writer(write_half, rx, queued));
    let mut input = BufReader::with_capacity(64 * 1024, read_half);
    loop {
        let mut head = [0u8; 2];
        if input.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u16::from_be_bytes(head) as usize;
        if len == 0 {
            break;
        }
        let mut frame = vec![0u8; 2 + len];
        frame[..2].copy_from_slice(&head);
        if input.read_exact(&mut frame[2..]).await.is_err() {
            break;
        }
        if !room.borrow().contains_key(&id) {
            break; // disconnected as a slow reader
        }
        relay(&room, id, Rc::from(frame));
    }
    room.borrow_mut().remove(&id);
}

fn main() -> std::io::Result<()> {
    let (bind, port) = args::bind_and_port("tokio_chat");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(SocketAddr::new(bind, port)).await?;
        eprintln!("tokio_chat listening on {}", listener.local_addr()?);
        let room: Room = Rc::new(RefCell::new(HashMap::new()));
        let mut next_id = 0u64;
        // SIGTERM (how bench/compare stops it) ends the process as is.
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                next_id += 1;
                tokio::task::spawn_local(serve(stream, next_id, room.clone()));
            }
        }
    })
}
