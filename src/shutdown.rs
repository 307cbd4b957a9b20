//! Process shutdown: the signal that starts it and the receiver every long-lived task holds.
//!
//! A [`Shutdown`] is a cloneable receiver; [`Trigger::fire`] (or SIGINT/SIGTERM through
//! [`signal`]) tells every holder to stop taking new work. Tasks only check it between steps, so a
//! durability-critical step (flush after `Pending`, flush after `Accepted`) is never cut in half.
//!
//! SIGHUP is not a shutdown: [`hangups`] hands it to `reload`.

use tokio::sync::watch;

/// Receiver side: clone one into every task that must stop on shutdown.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Sender side: fires the shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A connected trigger and receiver.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every receiver to shut down. Idempotent.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has been fired (at once if it already was, or if the trigger is gone).
    pub async fn recv(&mut self) {
        // An error means the trigger was dropped: nobody can keep us running, so stop.
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// Whether shutdown has been fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}

/// Resolves on the first SIGINT or SIGTERM (linkerd's `signal`).
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we cannot stop gracefully; never resolve rather than stop at once.
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
    }
}

/// SIGHUP deliveries (a config reload, see `reload`).
#[derive(Debug)]
pub struct Hangups(Option<tokio::signal::unix::Signal>);

/// Starts listening for SIGHUP. Call it before the node says it is ready: from then on a HUP
/// reloads instead of killing the process (SIGHUP's default action).
pub fn hangups() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Hangups(Some(s)),
        Err(error) => {
            tracing::error!(%error, "cannot install a SIGHUP handler; config reload is unavailable");
            Hangups(None)
        }
    }
}

impl Hangups {
    /// Resolves at the next SIGHUP (never, without a handler).
    pub async fn recv(&mut self) {
        match &mut self.0 {
            Some(s) => {
                if s.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_receiver_sees_the_shutdown() {
        let (trigger, mut a) = channel();
        let mut b = a.clone();
        assert!(!a.is_fired());
        trigger.fire();
        a.recv().await;
        b.recv().await;
        assert!(b.is_fired());
    }
}
