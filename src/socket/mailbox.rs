//! The sending half of a socket, used by the fan-out: write a message at once when the
//! connection takes it, else queue it and ring the socket thread's doorbell, and refuse it when
//! the client has stopped reading.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::doorbell::Doorbell;
use super::wire::{SendNow, Wire};
use crate::message::{Frame, Framing};
use crate::metrics;

/// The sending half of a socket: its connection (once the handshake is done), its bounded
/// queue and its doorbell.
#[derive(Debug, Clone)]
pub struct Mailbox {
    wire: Arc<Wire>,
    queue: Sender<Frame>,
    capacity: usize,
    doorbell: Arc<Doorbell>,
    framing: Framing,
}

/// A message could not be handed to a socket.
pub enum Undelivered {
    /// `capacity` messages are already waiting: the client does not read.
    Full,
    /// The socket thread is gone.
    Gone,
}

impl Mailbox {
    /// A mailbox holding at most `capacity` undelivered messages, and its receiving end.
    pub fn new(
        capacity: usize,
        wire: Arc<Wire>,
        doorbell: Arc<Doorbell>,
    ) -> (Mailbox, Receiver<Frame>) {
        // An unbounded channel bounded by hand: crossbeam's bounded channel allocates and
        // writes every slot up front (40 KiB for 1,024), for every idle socket.
        let (queue, inbox) = crossbeam_channel::unbounded();
        let mailbox = Mailbox {
            wire,
            queue,
            capacity,
            doorbell,
            framing: Framing::WebSocket,
        };
        (mailbox, inbox)
    }

    /// The same mailbox, for a connection that carries messages in `framing`.
    pub fn with_framing(mut self, framing: Framing) -> Mailbox {
        self.framing = framing;
        self
    }

    /// Writes `frame` to the connection at once if it can, without waiting (see
    /// [`Wire::try_send_now`]); else queues it and wakes the socket thread, unless `capacity`
    /// messages are already waiting. Only the hub sends, under its lock, so the length cannot
    /// grow between the check and the send.
    pub fn send(&self, frame: &Frame) -> Result<(), Undelivered> {
        // Counted before the frame can arrive, so a client that reads /metrics after a
        // message never finds it uncounted.
        let send_now = || {
            let nothing_queued = self.queue.is_empty();
            if nothing_queued {
                metrics::MESSAGES_SENT.add(1);
            }
            nothing_queued
        };
        match self.wire.try_send_now(frame.framed(self.framing), send_now) {
            SendNow::Sent => return Ok(()),
            SendNow::Backlogged => {
                self.doorbell.ring();
                return Ok(());
            }
            SendNow::Queue => {}
        }
        if self.queue.len() >= self.capacity {
            return Err(Undelivered::Full);
        }
        metrics::MESSAGES_SENT.add(1);
        self.queue
            .try_send(frame.clone())
            .map_err(|_| Undelivered::Gone)?;
        // One wake per burst: a queue that already held messages has a wake pending.
        if self.queue.len() <= 1 {
            self.doorbell.ring();
        }
        Ok(())
    }

    /// Asks the socket to close with `code` (the first request wins).
    pub fn request_close(&self, code: u16) {
        self.doorbell.request_close(code);
    }
}
