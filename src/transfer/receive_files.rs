//! The receiver's side once an offer is accepted: what is in the way checked, the
//! partial files of an interrupted transfer adopted for a resume, each file's stream
//! received, verified and named, then the receipt.

use std::sync::Arc;
use std::time::Instant;

use crate::crypto::file_hash::{FileHash, FileHasher, HashAlg};
use crate::crypto::identity::PublicKey;
use crate::crypto::pipeline::CipherPool;
use crate::crypto::stream::{ChunkLayout, ChunkSize, FileKeyContext, StreamError, TransferKey};
use crate::session::{self, Stage};
use crate::transfer::data::{self, FileData};
use crate::transfer::dest::{Destination, FoundPart, NameSyncs};
use crate::transfer::dirs::CreatedDirs;
use crate::transfer::error::{TransferError, Violation};
use crate::transfer::events::{Emit, Event, Summary};
use crate::transfer::manifest::ValidOffer;
use crate::transfer::paths::RelPath;
use crate::transfer::protocol::{
    Entry, FILE_STREAM_HEADER, HASHES_PER_MESSAGE, POINTS_PER_MESSAGE, ReceiptHashes, ReceiptStart,
    Refusal, RefusalCode, Reply, ResumePoint, ResumePoints,
};
use crate::transfer::receiver::{MAX_HELD_PARTS, ReceivePolicy, Session};
use crate::transfer::resume::{self, Sidecar};
use crate::transfer::sender::{FLIGHT_UNITS, TINY_FILES_IN_FLIGHT, flight_weight};
use crate::wire::stream_header::StreamHeader;

/// Receives an accepted offer on `s` into `dest`; returns once the receipt is sent.
pub(crate) async fn receive(
    ses: &mut Session,
    valid: ValidOffer,
    chunk: ChunkSize,
    began: Instant,
    dest: &Destination,
    policy: &ReceivePolicy,
    pool: &Arc<CipherPool>,
) -> Result<Summary, TransferError> {
    let ValidOffer {
        start: offer,
        entries,
        dirs,
    } = valid;
    let peer = ses.peer;
    // The offer's checks walk each directory once, not once per file.
    let checks = dest.for_offer();
    let in_the_way = || {
        entries
            .iter()
            .map(|(r, _)| r)
            .find(|r| !policy.overwrite && checks.exists(r))
            .or_else(|| {
                // An empty directory's place must be free or a directory.
                dirs.iter().find(|d| {
                    std::fs::symlink_metadata(dest.final_path(d)).is_ok_and(|m| !m.is_dir())
                })
            })
    };
    // An existing file (unless the policy overwrites), then names too long, a directory
    // in the way: before anything is created.
    let refusal = in_the_way()
        .map(|rel| Refusal::new(RefusalCode::Exists, rel.to_string()))
        .or_else(|| {
            entries
                .iter()
                .find_map(|(r, _)| checks.check(r, policy.overwrite))
                .map(|why| Refusal::new(RefusalCode::Policy, why))
        });
    let (plan, refusal) = match refusal {
        Some(r) => (ResumePlan::default(), Some(r)),
        None => plan_resume(
            &checks,
            &peer,
            &entries,
            chunk,
            offer.total_size,
            &ses.emit,
            ses.est.file_hash(),
        )?,
    };
    // Nothing of the offer exists yet: what it creates and leaves empty goes if it fails.
    let created = CreatedDirs::note(dest.root(), entries.iter().map(|(r, _)| r), &dirs);
    ses.decide(&offer, refusal).await?;
    let points = plan.points.len() as u64;
    session::send(
        &mut ses.tx,
        &mut ses.est,
        &Reply::Accept {
            resume_points: points,
        },
    )
    .await?;
    for batch in plan.points.chunks(POINTS_PER_MESSAGE) {
        session::send(&mut ses.tx, &mut ses.est, &ResumePoints(batch.to_vec())).await?;
    }
    let mut held = plan.held;
    let mut superseded = plan.superseded;

    let keys = TransferKey::derive(ses.est.file_salt().as_slice(), &offer.session_secret)
        .with_suite(ses.est.suite())
        .with_file_hash(ses.est.file_hash());
    // In known-recipient mode the transfer id also travelled in message 1: they must agree.
    let transfer_id = offer.transfer_id;
    if ses.est.transfer_id().is_some_and(|t| t != transfer_id) {
        return Err(Violation::TransferIdMismatch.into());
    }
    let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut got: Vec<Option<FileHash>> = vec![None; entries.len()];
    let mut resumed = 0u64;
    // Files at once (each on its own stream) while they weigh less than FLIGHT_UNITS.
    let mut started = vec![false; entries.len()];
    let mut accepted = 0usize;
    let mut weight = 0u32;
    let mut tasks = tokio::task::JoinSet::new();
    let names = Arc::new(NameSyncs::default());
    while accepted < entries.len() || !tasks.is_empty() {
        tokio::select! {
            s = ses.conn.accept_uni(), if accepted < entries.len() && tasks.len() < TINY_FILES_IN_FLIGHT && weight < FLIGHT_UNITS => {
                let mut s = s?;
                accepted += 1;
                let mut header = [0u8; FILE_STREAM_HEADER];
                let read = async {
                    s.read_exact(&mut header)
                        .await
                        .map_err(|e| TransferError::from(Violation::StreamHeader(e.to_string())))
                };
                policy.timeouts.within(Stage::StreamHeader, read).await?;
                let header = StreamHeader::decode(&header);
                let (index, first) = (header.index, header.first);
                let slot = header.slot(&started).map_err(Violation::from)?;
                started[slot] = true;
                let (rel, e) = &entries[slot];
                weight += flight_weight(e.size);
                let layout = ChunkLayout::new(e.size, chunk);
                let mut ctx = FileKeyContext::fresh(transfer_id, index, chunk);
                let mut tree = FileHasher::new(keys.file_hash(), &layout);
                // Continued in the partial file the plan checked, or started in a new one
                // (the old one, if the sender started over, is removed once it exists).
                let held_here = held.remove(&slot);
                let (mut adopt, mut old) = (None, None);
                if first != 0 {
                    // Only where this receiver offered to continue, and only from that chunk.
                    let (from, prefix, prefix_tree, sidecar, file) = held_here
                        .filter(|(from, ..)| *from == first)
                        .ok_or(Violation::ResumeNotOffered(index))?;
                    adopt = Some((file, sidecar));
                    ses.rec.resumed(rel.as_str(), e.size, layout.offset(from)).await?;
                    ctx.resume_from = from;
                    ctx.resume_prefix_hash = prefix;
                    tree = prefix_tree;
                    resumed += layout.offset(from);
                    moved.fetch_add(layout.offset(from), std::sync::atomic::Ordering::Relaxed);
                } else {
                    old = held_here.map(|h| h.3.part).or_else(|| superseded.remove(&slot));
                }
                // The file whose prefix was hashed is the one written (no reopening by name).
                let (keep, size) = (layout.offset(first), e.size);
                let mut part = match adopt {
                    Some((file, sidecar)) => dest.open_part(rel, &peer, Some((file, &sidecar)), keep, size)?,
                    None => dest.open_part(rel, &peer, None, keep, size)?,
                };
                if let Some(old) = old {
                    part.remove_superseded(&old);
                }
                let writer = part.writer()?;
                let mut reservation = part.take_reservation();
                // A file whose rest is one chunk is complete with that chunk's write: a
                // checkpoint could record nothing before its end (see
                // `Checkpoint::wrote`), so none is made (every small file).
                let mut checkpoint = (layout.count().saturating_sub(first) > 1).then(|| {
                    part.checkpoint(Sidecar::new(&peer, rel, e, chunk, part.part_name()), first)
                });
                let fd = FileData::new(
                    &keys,
                    &ctx,
                    e.size,
                    tree,
                    (u64::from(crate::transport::STREAM_WINDOW), pool.threads()),
                );
                let chunk_bytes = u64::from(chunk.get());
                let sink = Box::new(move |off: u64, buf: &[u8]| {
                    if let Some(r) = &mut reservation {
                        r.ahead_of(off)?;
                    }
                    std::os::unix::fs::FileExt::write_all_at(&*writer, buf, off)?;
                    match &mut checkpoint {
                        Some(c) => c.wrote(off / chunk_bytes, buf.len() as u64),
                        None => Ok(()),
                    }
                });
                let progress = ses.emit.progress(offer.total_size, &moved);
                let keep_exec = policy.keep_modes && e.mode & 0o100 != 0;
                let (pool, overwrite, shown, size) =
                    (Arc::clone(pool), policy.overwrite, rel.to_string(), e.size);
                let (rec, names) = (Arc::clone(&ses.rec), Arc::clone(&names));
                let name = rel.as_str().to_string();
                tasks.spawn(async move {
                    let r = match data::receive_file(s, &pool, fd, sink, progress).await {
                        // Verified: given its name (durably), and then on record as
                        // completed. A file that does not get its name is not recorded as
                        // completed (its temporary file is removed; the transfer's failure
                        // record says why).
                        Ok(hash) => match part.rename(overwrite, keep_exec) {
                            // Its name durable (one directory fsync for the files renamed
                            // at about the same time), then its record (one commit for
                            // the records written at about the same time).
                            Ok(renamed) => match names.durable(renamed).await {
                                Ok(()) => rec
                                    .file_completed(&name, size, &hash)
                                    .await
                                    .map(|()| hash)
                                    .map_err(TransferError::Audit),
                                Err(e) => Err(TransferError::from(e)),
                            },
                            Err(e) => Err(TransferError::from(e)),
                        },
                        Err(source) => {
                            // Forged or corrupted data is not kept; an interruption keeps
                            // the verified prefix (and its sidecar) for a later resume.
                            if source.stream_error().is_some_and(StreamError::is_integrity) {
                                part.discard();
                            }
                            Err(TransferError::Data { file: shown, source })
                        }
                    };
                    (slot, r)
                });
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let (slot, r) = done.map_err(|e| TransferError::Io(std::io::Error::other(e)))?;
                weight = weight.saturating_sub(flight_weight(entries[slot].1.size));
                let hash = r?;
                got[slot] = Some(hash);
                let (rel, e) = &entries[slot];
                ses.emit.emit(Event::FileDone {
                    path: rel.to_string(),
                    size: e.size,
                    hash,
                });
            }
        }
    }
    let hashes: Vec<FileHash> = got
        .into_iter()
        .map(|h| h.ok_or(Violation::MissingFile))
        .collect::<Result<_, _>>()?;
    for d in &dirs {
        crate::transfer::dirs::create(dest.root(), d)?;
    }
    let head = ses
        .rec
        .receipt(
            &hashes,
            ses.est.file_hash(),
            offer.total_size,
            offer.audit_head.as_ref(),
            Some(crate::transport::path::path_of(&ses.conn)),
        )
        .await?;
    send_receipt(&mut ses.tx, &mut ses.est, &hashes, head).await?;
    created.keep();
    // The sender closes once it has the receipt; the caller waits for that close so the
    // receipt is not cut off.
    let files = entries
        .into_iter()
        .zip(hashes)
        .map(|((rel, e), h)| (rel, e.size, h))
        .collect();
    Ok(Summary {
        peer,
        files,
        bytes: offer.total_size,
        resumed,
        seconds: began.elapsed().as_secs_f64(),
        suite: ses.est.suite(),
        path: crate::transport::path::path_of(&ses.conn),
    })
}

/// What the receiver offers to continue: the points sent, and per file slot the chunk,
/// prefix hash and hash state to continue from.
#[derive(Default)]
struct ResumePlan {
    points: Vec<ResumePoint>,
    /// Per file slot: the chunk to continue from, the prefix hash and tree state, the
    /// sidecar, and the partial file itself (open and locked; the prefix was hashed
    /// through it and the rest is written through it).
    held: std::collections::HashMap<usize, (u64, [u8; 32], FileHasher, Sidecar, std::fs::File)>,
    /// Per file slot, the partial file of an older offer of the same file from the same
    /// sender (another size or mtime, or nothing durable): removed once the new one
    /// exists.
    superseded: std::collections::HashMap<usize, String>,
}

/// Finds the files this receiver holds in part from an interrupted transfer of the same
/// sender, and checks that what is left to receive fits (and that the destination is
/// writable). Returns the plan, or a refusal.
fn plan_resume(
    dest: &Destination,
    peer: &PublicKey,
    entries: &[(RelPath, Entry)],
    chunk: ChunkSize,
    total: u64,
    events: &Emit,
    alg: HashAlg,
) -> Result<(ResumePlan, Option<Refusal>), TransferError> {
    let mut plan = ResumePlan::default();
    let mut have = 0u64;
    for (i, (rel, e)) in entries.iter().enumerate() {
        if plan.held.len() >= MAX_HELD_PARTS {
            // Each held partial file is an open descriptor until its stream: a bound.
            continue;
        }
        let (file, sidecar) = match dest.find_part(peer, rel) {
            FoundPart::None => continue,
            FoundPart::Usable(file, sidecar) => (file, sidecar),
            FoundPart::Refused(why) => {
                // Left alone; the file starts over under a new temporary name.
                events.emit(Event::Warning {
                    path: Some(rel.to_string()),
                    message: format!("partial file not adopted for a resume: {why}"),
                });
                continue;
            }
        };
        if !sidecar.matches(peer, rel, e, chunk) {
            // An older offer of the file (another size or mtime): started over.
            plan.superseded.insert(i, sidecar.part);
            continue;
        }
        let layout = ChunkLayout::new(e.size, chunk);
        // At least the last chunk is always sent again.
        let from = sidecar.durable_chunks.min(layout.count() - 1);
        let on_disk = file.metadata().map(|m| m.len()).unwrap_or(0);
        if from == 0 || on_disk < layout.offset(from) {
            plan.superseded.insert(i, sidecar.part);
            continue;
        }
        let (prefix, tree) = resume::hash_prefix(&file, &layout, from, alg)?;
        plan.points.push(ResumePoint {
            file: i as u64,
            from_chunk: from,
            prefix_hash: prefix,
        });
        plan.held.insert(i, (from, prefix, tree, sidecar, file));
        have += layout.offset(from);
    }
    let space = dest.space()?;
    if space.read_only {
        return Ok((
            plan,
            Some(Refusal::new(
                RefusalCode::Policy,
                "the destination is read-only",
            )),
        ));
    }
    let needed = total.saturating_sub(have);
    if needed > space.available {
        return Ok((
            plan,
            Some(Refusal::new(
                RefusalCode::NoSpace,
                format!(
                    "{} needed, {} available",
                    crate::transfer::sentences::size(needed),
                    crate::transfer::sentences::size(space.available)
                ),
            )),
        ));
    }
    Ok((plan, None))
}

/// Sends the receipt: the start with this receiver's audit chain head, then the hashes
/// in batches.
pub(crate) async fn send_receipt(
    tx: &mut quinn::SendStream,
    est: &mut crate::crypto::handshake::Established,
    hashes: &[FileHash],
    head: Option<[u8; 32]>,
) -> Result<(), TransferError> {
    let start = ReceiptStart {
        count: hashes.len() as u64,
        audit_head: head,
    };
    session::send(tx, est, &start).await?;
    for batch in hashes.chunks(HASHES_PER_MESSAGE) {
        let batch = ReceiptHashes(batch.iter().map(|h| *h.as_bytes()).collect());
        session::send(tx, est, &batch).await?;
    }
    Ok(())
}
