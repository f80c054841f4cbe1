//! [`serve_on_workers`]: connections spread over worker threads, each with a single-threaded
//! runtime of its own.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;

use super::listener::{next_accepted, StdStream};
use super::{serve, ConnServer, Connections, Listener};
use crate::config::Limits;

/// [`serve`], with the connections spread over `workers` threads of their own, each running a
/// single-threaded runtime (as nginx runs worker processes): a connection and everything its
/// requests do — hyper's parsing, the upstream call on that thread's own connection pool, the
/// timers — stay on one thread, with no work stealing and no cross-thread wake-ups per request.
/// The calling runtime accepts and hands each connection to the worker with the fewest open
/// ones; token refreshes, admin and reloads stay on it too. Worker `i` serves with `handler(i)`
/// (the proxy's handler for a worker uses that worker's stack and upstream pool).
pub async fn serve_on_workers<M, H, F, RB>(
    listener: Listener,
    handler: M,
    shutdown: impl Future<Output = Duration>,
    limits: Limits,
    name: &'static str,
    workers: usize,
) where
    M: Fn(usize) -> H,
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<RB>> + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<crate::proxy::BoxError>,
{
    let workers = workers.max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut pool = Vec::with_capacity(workers);
    for index in 0..workers {
        match Worker::spawn(index, ConnServer::new(handler(index), limits, name)) {
            Ok(w) => pool.push(w),
            Err(e) => {
                // No thread to be had (a tight `ulimit -u`): serve on the threads there are.
                tracing::warn!(listener = name, "cannot start worker thread {index}: {e}");
                break;
            }
        }
    }
    if pool.is_empty() {
        tracing::warn!(
            listener = name,
            "no worker thread could start; serving on the main runtime"
        );
        return serve(listener, handler(0), shutdown, limits, name).await;
    }
    tracing::debug!(
        listener = name,
        workers = pool.len(),
        "worker threads started"
    );
    let mut refused = Connections::default();
    tokio::pin!(shutdown);
    let grace = loop {
        refused.reap();
        let io = match next_accepted(&listener, shutdown.as_mut(), name).await {
            Ok(io) => io,
            Err(grace) => break grace,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused.refuse(io.into_io(), &limits, name);
            continue;
        };
        // Off this runtime's reactor, onto the worker's.
        let stream = match io.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(listener = name, "cannot hand the connection on: {e}");
                continue;
            }
        };
        hand_over(&pool, stream, slot, name);
    };
    drop(listener);
    drain(pool, grace, name).await;
    refused.abort();
}

/// Gives the connection to the worker with the fewest open ones.
fn hand_over(
    pool: &[Worker],
    stream: StdStream,
    slot: tokio::sync::OwnedSemaphorePermit,
    name: &'static str,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(worker) = pool.iter().min_by_key(|w| w.open.load(Relaxed)) else {
        return;
    };
    worker.open.fetch_add(1, Relaxed);
    if worker.tx.send(WorkerMsg::Conn(stream, slot)).is_err() {
        worker.open.fetch_sub(1, Relaxed);
        tracing::warn!(listener = name, "a worker thread has stopped");
    }
}

/// Tells every worker to drain for up to `grace`, and waits for them.
async fn drain(pool: Vec<Worker>, grace: Duration, name: &'static str) {
    tracing::info!(
        listener = name,
        grace_ms = grace.as_millis() as u64,
        "draining connections"
    );
    for w in &pool {
        let _ = w.tx.send(WorkerMsg::Drain(grace));
    }
    for w in pool {
        let _ = w.done.await;
        let _ = w.thread.join();
    }
}

enum WorkerMsg {
    Conn(StdStream, tokio::sync::OwnedSemaphorePermit),
    /// Stop taking connections; let the open ones finish for up to this long.
    Drain(Duration),
}

/// One worker thread of [`serve_on_workers`].
struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<WorkerMsg>,
    /// Connections handed to it and not yet closed.
    open: Arc<std::sync::atomic::AtomicUsize>,
    /// Resolves when it has drained.
    done: tokio::sync::oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn spawn<H, F, RB>(index: usize, server: ConnServer<H>) -> io::Result<Worker>
    where
        H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = hyper::Response<RB>> + Send + 'static,
        RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        RB::Error: Into<crate::proxy::BoxError>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&open);
        let name = server.name();
        let thread = std::thread::Builder::new()
            .name(format!("patless-{name}-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut conns = Connections::default();
                    let grace = loop {
                        conns.reap();
                        match rx.recv().await {
                            Some(WorkerMsg::Conn(stream, slot)) => match stream.into_tokio() {
                                Ok(io) => {
                                    server.start(&mut conns, io, slot, Some(Arc::clone(&count)))
                                }
                                Err(e) => {
                                    count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                                    tracing::debug!(
                                        listener = name,
                                        "cannot take the connection: {e}"
                                    );
                                }
                            },
                            Some(WorkerMsg::Drain(grace)) => break grace,
                            None => break Duration::ZERO,
                        }
                    };
                    drop(rx);
                    conns.drain_quietly(grace, name).await;
                });
                let _ = done_tx.send(());
            })?;
        Ok(Worker {
            tx,
            open,
            done,
            thread,
        })
    }
}
