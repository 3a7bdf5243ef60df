// The chat room's UDP door and `udp-chat` against forged senders, end to
// end: an address that has not proven it receives our datagrams is sent at
// most three times what it sent; empty datagrams and forged newcomers do not
// keep a real peer out; a message of ours that comes back round a loop of
// hubs goes no further; and `udp-chat` keeps a real peer against a flood of
// forged ones. See `tests/trust.rs` for the TCP doors, and
// `src/routability.rs` for the challenge a peer answers.
//
// Every wait has a deadline: socket reads time out, and process and log
// waits go through `support`'s helpers. Nothing sleeps to synchronise.

mod support;

use std::io::Write;

use support::room::*;

// ----- The UDP door -----------------------------------------------------------------

#[test]
fn an_address_that_spoke_once_and_never_answers_gets_at_most_three_times_what_it_sent() {
    let (mut server, doors, _out) = server(&[]);
    let mut bob = Framed::connect(doors.tcp);
    bob.say("Bob", "here");
    let mut ann = Framed::connect(doors.tcp);
    ann.say("Ann", "here");
    server.wait_line("is Ann", LONG);
    // One datagram, as a forger would send it with a victim's address.
    let victim = UdpPeer::new();
    let sent = victim.say(doors.udp, "Victim", "hello");
    bob.wait_for("Victim", "hello");
    // The room is busy. Every datagram for the victim leaves the server
    // before the frame that Bob reads for the same message.
    for i in 0..100 {
        ann.say("Ann", &format!("busy room {i}"));
    }
    for i in 0..100 {
        bob.wait_for("Ann", &format!("busy room {i}"));
    }
    let got: usize = victim.drain().iter().map(Vec::len).sum();
    assert!(
        got <= 3 * sent,
        "an address that sent {sent} bytes and never answered was sent {got}"
    );
}

#[test]
fn empty_datagrams_and_forged_newcomers_do_not_keep_a_real_peer_out() {
    let (mut server, doors, _out) = server(&["--udp-max-peers", "8"]);
    let mut bob = Framed::connect(doors.tcp);
    bob.say("Bob", "here");
    server.wait_line("is Bob", LONG);
    // Empty datagrams from many ports, then newcomers that never prove their address.
    let flood: Vec<UdpPeer> = (0..100).map(|_| UdpPeer::new()).collect();
    for peer in &flood {
        peer.socket.send_to(&[], doors.udp).unwrap();
    }
    for (i, peer) in flood.iter().take(12).enumerate() {
        peer.say(doors.udp, &format!("forged{i}"), "hi");
    }
    bob.wait_for("forged11", "hi");
    // A real peer comes in, proves its address, and hears the room.
    let real = UdpPeer::new();
    real.say(doors.udp, "Real", "let me in");
    bob.wait_for("Real", "let me in");
    real.answer_challenge(doors.udp, "Real");
    server.wait_line("proved its address", LONG);
    bob.say("Bob", "welcome, Real");
    loop {
        let text = real.recv();
        if text.ends_with("Bob:\n\twelcome, Real") {
            break;
        }
    }
}

#[test]
fn a_message_of_ours_that_comes_back_round_a_loop_goes_no_further() {
    let (mut server, doors, _out) = server(&[]);
    let mut bob = Framed::connect(doors.tcp);
    bob.say("Bob", "here");
    let mut ann = Framed::connect(doors.tcp);
    ann.say("Ann", "here");
    // Another hub, as the room's UDP peer: it proves its address.
    let hub = UdpPeer::new();
    hub.say(doors.udp, "Hub", "hub here");
    hub.answer_challenge(doors.udp, "Hub");
    server.wait_line("proved its address", LONG);

    ann.say("Ann", "round and round");
    let relayed = loop {
        let text = hub.recv();
        if text.ends_with("Ann:\n\tround and round") {
            break text;
        }
    };
    // The hub relays it back: as it came, and stamped with its own name.
    hub.socket.send_to(relayed.as_bytes(), doors.udp).unwrap();
    let restamped = relayed.replace("] Ann:", "] Hub:");
    hub.socket.send_to(restamped.as_bytes(), doors.udp).unwrap();
    hub.say(doors.udp, "Hub", "after the loop");
    let seen = messages_until(&mut bob, "Hub", "after the loop");
    let copies = seen.iter().filter(|(_, t)| t == "round and round").count();
    assert_eq!(copies, 1, "{seen:?}");
}

#[test]
fn forged_senders_do_not_push_a_real_peer_out_of_udp_chat() {
    let (mut alice, alice_addr, _alice_out) = udp_chat("alice", &["--max-peers", "4"], &[]);
    let (mut bob, bob_addr, mut bob_out) = udp_chat("bob", &[], &[alice_addr]);
    let mut bob_in = bob.stdin();
    bob_in.write_all(b"hello alice\n").unwrap();
    alice.wait_line(&format!("peer {bob_addr} proved its address"), LONG);
    // Fifty forged newcomers, none of which ever answers.
    let flood: Vec<UdpPeer> = (0..50).map(|_| UdpPeer::new()).collect();
    for (i, peer) in flood.iter().enumerate() {
        peer.say(alice_addr, &format!("forged{i}"), "let me in");
    }
    alice.wait_line("is forgotten", LONG);
    let mut alice_in = alice.stdin();
    alice_in.write_all(b"still there, bob?\n").unwrap();
    bob_out.wait("\tstill there, bob?");
}
