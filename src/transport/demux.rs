//! One UDP socket shared by a quinn endpoint and the datagrams that are not QUIC
//! (wrapped packets, [`crate::wire::wrap`]): a quinn [`AsyncUdpSocket`] that reads in
//! batches (recvmmsg, GRO where the kernel has it, through `quinn-udp`), hands each
//! datagram that is not QUIC to a [`Divert`] and passes the rest to quinn untouched.
//!
//! A diverted datagram may be sent on at once from the same socket, rewritten in place
//! ([`Verdict::Send`]): that is the relay's datagram switch. Runs of datagrams from one
//! GRO batch that go to the same address with the same size leave as one GSO send. There
//! is no queue: a send the socket cannot take now is dropped (and counted by the
//! [`Divert`]); QUIC end to end retransmits.
//!
//! Telling QUIC apart needs every endpoint on the socket to keep its fixed bit:
//! [`super::endpoint_config`] turns greasing off (RFC 9287).

use std::fmt::Debug;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;

use crate::wire::wrap::{self, Kind};

/// Receive batches a poll may read whose datagrams were all diverted before it yields
/// to the runtime (fairness towards the other tasks of the endpoint's driver).
const DIVERT_BUDGET: usize = 64;

/// Most UDP payload bytes one GSO send may carry (the kernel's limit is 64 KiB).
const MAX_GSO_BYTES: usize = 65_000;

/// What to do with one diverted datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing more (dropped, or taken care of by the [`Divert`]).
    Drop,
    /// Send the datagram, as rewritten in place (same length), to this address from the
    /// same socket.
    Send(SocketAddr),
    /// A wrapped packet for this endpoint: hand what follows the header to quinn, as if it
    /// had come from this address (a client's path through the relay, [`super::path`]).
    Deliver(SocketAddr),
}

/// Receives the datagrams of a [`DemuxSocket`] that are not QUIC.
pub trait Divert: Debug + Send + Sync + 'static {
    /// One datagram (`kind` is [`Kind::Wrapped`] or [`Kind::Reserved`]) that came from
    /// `from`; it may be rewritten in place.
    fn datagram(&self, from: SocketAddr, kind: Kind, datagram: &mut [u8]) -> Verdict;

    /// A datagram this divert chose to send could not be sent (the socket was full or
    /// failed): it is dropped.
    fn send_failed(&self) {}

    /// Where quinn's datagrams to `to` really go ([`Route::AsIs`] by default).
    fn route(&self, to: SocketAddr) -> Route {
        let _ = to;
        Route::AsIs
    }

    /// The address quinn is told a QUIC datagram from `from` came from (`from` by
    /// default; a peer's direct address becomes the address quinn knows it by).
    fn quic_source(&self, from: SocketAddr) -> SocketAddr {
        from
    }
}

/// Where quinn's datagrams to one address go ([`Divert::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To that address, as they are.
    AsIs,
    /// As they are, to this address instead (a peer's direct path).
    To(SocketAddr),
    /// Each wrapped for this channel ([`wrap::header`]), to this address (the relay).
    Wrapped(SocketAddr, u64),
}

/// A UDP socket under a quinn endpoint that diverts what is not QUIC.
#[derive(Debug)]
pub struct DemuxSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    divert: Arc<dyn Divert>,
}

impl DemuxSocket {
    /// Wraps a bound socket (call within a tokio runtime).
    pub fn new(socket: std::net::UdpSocket, divert: Arc<dyn Divert>) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(DemuxSocket {
            io: tokio::net::UdpSocket::from_std(socket)?,
            state,
            divert,
        })
    }

    /// Sends one datagram now, outside quinn (a wrapped packet, a probe). `WouldBlock`
    /// when the socket is full: the datagram is not queued.
    pub fn send_to(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents: datagram,
            segment_size: None,
            src_ip: None,
        };
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), &t)
        })
    }

    /// Sends `contents` as datagrams of `segment` bytes each (the last may be shorter) to
    /// `to` in one call: one GSO send where the kernel has it (at most
    /// [`AsyncUdpSocket::max_transmit_segments`] of them). `WouldBlock` when the socket
    /// is full: nothing is queued.
    pub fn send_segments(&self, to: SocketAddr, contents: &[u8], segment: usize) -> io::Result<()> {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), &t)
        })
    }

    /// Sends quinn's `transmit` (one datagram, or several of its segment size) to `to`
    /// with each datagram wrapped for `channel`: the header goes in front of every
    /// segment, so the segments grow by [`wrap::HEADER_LEN`] and still leave as GSO
    /// sends (split where one would pass the kernel's limits). The datagrams are copied
    /// once, behind their headers, into a buffer this thread keeps. A send the socket
    /// cannot take is not queued: `WouldBlock` if nothing left (quinn tries again), and
    /// what did not leave after a part did is lost, as on the network (QUIC retransmits).
    fn send_wrapped(&self, transmit: &Transmit, to: SocketAddr, channel: u64) -> io::Result<()> {
        thread_local! {
            static WRAPPED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let header = wrap::header(channel);
        let contents = transmit.contents;
        let segment = transmit.segment_size.unwrap_or(contents.len()).max(1);
        let wrapped = segment + wrap::HEADER_LEN;
        let per_send = (MAX_GSO_BYTES / wrapped)
            .min(self.state.max_gso_segments())
            .max(1);
        WRAPPED.with_borrow_mut(|buf| {
            let mut sent_any = false;
            for group in contents.chunks(segment * per_send) {
                buf.clear();
                for seg in group.chunks(segment) {
                    buf.extend_from_slice(&header);
                    buf.extend_from_slice(seg);
                }
                let t = Transmit {
                    destination: to,
                    ecn: transmit.ecn,
                    contents: buf,
                    segment_size: (group.len() > segment).then_some(wrapped),
                    src_ip: transmit.src_ip,
                };
                match self.io.try_io(Interest::WRITABLE, || {
                    self.state.send((&self.io).into(), &t)
                }) {
                    Ok(()) => sent_any = true,
                    Err(e) if !sent_any => return Err(e),
                    Err(_) => {
                        self.divert.send_failed();
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }

    /// Waits until the socket may take a send.
    pub async fn writable(&self) -> io::Result<()> {
        self.io.writable().await
    }

    /// Sends `run` (one or more datagrams of `stride` bytes, the last possibly shorter)
    /// to `to`, as one GSO send when there are several; a failure is the divert's drop.
    fn send_run(&self, to: SocketAddr, run: &[u8], stride: usize, meta: &RecvMeta) {
        let segments = run.len().div_ceil(stride.max(1));
        let t = Transmit {
            destination: to,
            ecn: meta.ecn,
            contents: run,
            segment_size: (segments > 1).then_some(stride),
            src_ip: meta.dst_ip,
        };
        let sent = self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), &t)
        });
        if sent.is_err() {
            for _ in 0..segments {
                self.divert.send_failed();
            }
        }
    }

    /// Diverts what is not QUIC in the first `n` received datagrams; moves what stays
    /// to the front of `bufs` and `meta`. Returns how many stay for quinn.
    fn sift(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let mut kept = 0;
        let max_run = self.state.max_gso_segments().max(1);
        for i in 0..n.min(bufs.len()).min(meta.len()) {
            let m = meta[i];
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let Some(data) = bufs[i].get_mut(..m.len) else {
                continue;
            };
            if stride == 0 {
                continue;
            }
            // Fast path: a datagram (or GRO batch) whose first segment is QUIC and
            // whose segments all are.
            let all_quic = data
                .chunks(stride)
                .all(|seg| wrap::classify(seg) == Kind::Quic);
            let (len, delivered) = if all_quic {
                (m.len, None)
            } else {
                self.sift_segments(data, stride, &m, max_run)
            };
            if len == 0 {
                continue;
            }
            if kept != i {
                let (lo, hi) = bufs.split_at_mut(i);
                let (Some(dst), Some(src)) = (lo[kept].get_mut(..len), hi[0].get(..len)) else {
                    continue;
                };
                dst.copy_from_slice(src);
            }
            let mut kept_meta = m;
            kept_meta.len = len;
            match delivered {
                Some((from, stride)) => {
                    kept_meta.addr = from;
                    kept_meta.stride = stride;
                }
                None => kept_meta.addr = self.divert.quic_source(m.addr),
            }
            meta[kept] = kept_meta;
            kept += 1;
        }
        kept
    }

    /// One datagram or GRO batch with something that is not QUIC in it: diverts those
    /// segments (sending runs to one address as one GSO send), compacts what stays for
    /// quinn to the front and returns its length. What stays is either the QUIC segments
    /// (from the batch's address) or the wrapped packets delivered to this endpoint,
    /// without their headers, with the address and the stride they now have: a batch
    /// holds one source's datagrams of one size, so a mix of the two is rare (a packet of
    /// a relay's control connection among its wrapped ones), and the kind that came
    /// second is dropped (QUIC retransmits).
    fn sift_segments(
        &self,
        data: &mut [u8],
        stride: usize,
        m: &RecvMeta,
        max_run: usize,
    ) -> (usize, Option<(SocketAddr, usize)>) {
        let total = data.len();
        let mut keep_end = 0;
        // Where the delivered packets come from, once one was; whether QUIC stays.
        let mut delivered: Option<SocketAddr> = None;
        let mut quic_kept = false;
        // The current run of segments to send: where it starts, its length, its address.
        let mut run: Option<(usize, usize, SocketAddr)> = None;
        let mut start = 0;
        while start < total {
            let end = (start + stride).min(total);
            let kind = data.get(start..end).map_or(Kind::Quic, wrap::classify);
            if kind == Kind::Quic {
                if let Some((s, l, to)) = run.take() {
                    self.flush(data, s, l, to, stride, m);
                }
                if delivered.is_none() {
                    if keep_end != start {
                        data.copy_within(start..end, keep_end);
                    }
                    keep_end += end - start;
                    quic_kept = true;
                }
            } else {
                let verdict = match data.get_mut(start..end) {
                    Some(seg) => self.divert.datagram(m.addr, kind, seg),
                    None => Verdict::Drop,
                };
                match (verdict, run) {
                    (Verdict::Send(to), Some((s, l, at)))
                        if at == to
                            && l % stride == 0
                            && l / stride < max_run
                            && l + (end - start) <= MAX_GSO_BYTES
                            && s + l == start =>
                    {
                        run = Some((s, l + end - start, at));
                    }
                    (Verdict::Send(to), _) => {
                        if let Some((s, l, at)) = run.take() {
                            self.flush(data, s, l, at, stride, m);
                        }
                        run = Some((start, end - start, to));
                    }
                    (Verdict::Drop, _) => {
                        if let Some((s, l, at)) = run.take() {
                            self.flush(data, s, l, at, stride, m);
                        }
                    }
                    (Verdict::Deliver(from), _) => {
                        if let Some((s, l, at)) = run.take() {
                            self.flush(data, s, l, at, stride, m);
                        }
                        let inner = start + wrap::HEADER_LEN..end;
                        if !quic_kept && delivered.is_none_or(|d| d == from) && !inner.is_empty() {
                            delivered = Some(from);
                            let n = inner.len();
                            data.copy_within(inner, keep_end);
                            keep_end += n;
                        }
                    }
                }
            }
            start = end;
        }
        if let Some((s, l, to)) = run {
            self.flush(data, s, l, to, stride, m);
        }
        let stride = stride.saturating_sub(wrap::HEADER_LEN).max(1);
        (keep_end, delivered.map(|from| (from, stride)))
    }

    fn flush(&self, data: &[u8], s: usize, l: usize, to: SocketAddr, stride: usize, m: &RecvMeta) {
        if let Some(run) = data.get(s..s + l) {
            self.send_run(to, run, stride, m);
        }
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            waiting: Mutex::new(None),
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match self.divert.route(transmit.destination) {
            Route::AsIs => self.io.try_io(Interest::WRITABLE, || {
                self.state.send((&self.io).into(), transmit)
            }),
            Route::To(to) => {
                // From whatever address the kernel picks towards the peer, as the probes
                // that opened this path went: quinn's pinned source is the one the relay's
                // packets arrived on.
                let t = Transmit {
                    destination: to,
                    src_ip: None,
                    ..*transmit
                };
                self.io.try_io(Interest::WRITABLE, || {
                    self.state.send((&self.io).into(), &t)
                })
            }
            Route::Wrapped(to, channel) => self.send_wrapped(transmit, to, channel),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut budget = DIVERT_BUDGET;
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            let Ok(n) = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) else {
                // WouldBlock cleared the readiness; other errors (an ICMP error queued
                // on the socket) are for this one read only, as quinn's own socket does.
                continue;
            };
            let kept = self.sift(bufs, meta, n);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            budget -= 1;
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// Waits for the socket to be writable, for one task of quinn's.
struct Writable {
    socket: Arc<DemuxSocket>,
    /// The pending wait (behind a mutex only so that the poller is `Sync`; it is only
    /// ever reached through `&mut`).
    waiting: Mutex<Option<WritableFuture>>,
}

impl Debug for Writable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let slot = this
            .waiting
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let fut = slot.get_or_insert_with(|| {
            let socket = Arc::clone(&this.socket);
            Box::pin(async move { socket.io.writable().await })
        });
        let ready = ready!(fut.as_mut().poll(cx));
        *slot = None;
        Poll::Ready(ready)
    }
}
