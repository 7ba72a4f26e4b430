//! What the agent does on SIGTERM, SIGINT and SIGUSR2 (KUMA-FACTS 1.6): a graceful drain, cut
//! short by a second signal, forced by a third; SIGUSR2 drains inbound listeners and keeps
//! running.
//!
//! The sequence is a state machine over a stream of [`SignalEvent`]s acting through
//! [`ShutdownControl`], so tests drive it with a channel and a fake; [`os_signals`] is the real
//! source and [`AgentShutdown`] the real control.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::envoy::{AdminClient, AdminError};

/// A signal the agent acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGINT: stop, like SIGTERM.
    Interrupt,
    /// SIGTERM: stop.
    Terminate,
    /// SIGUSR2: drain inbound listeners, keep running.
    User2,
}

impl SignalEvent {
    /// The signal's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            SignalEvent::Interrupt => "SIGINT",
            SignalEvent::Terminate => "SIGTERM",
            SignalEvent::User2 => "SIGUSR2",
        }
    }

    fn is_stop(self) -> bool {
        matches!(self, SignalEvent::Interrupt | SignalEvent::Terminate)
    }
}

/// The actions the shutdown sequence takes on the agent and Envoy.
pub trait ShutdownControl {
    /// Readiness answers 503 `TERMINATING` from now on.
    fn set_terminating(&self);
    /// Envoy starts failing its health checks (`POST /healthcheck/fail`).
    fn healthcheck_fail(&self) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// Envoy drains its inbound listeners and keeps running.
    fn drain_inbound(&self) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// Stops Envoy (SIGTERM, SIGKILL after the grace period) and with it the agent.
    fn stop(&self);
    /// Ends the agent at once with status 1.
    fn force_exit(&self);
}

/// How [`SignalHandler::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalsOutcome {
    /// The event source ended (the agent is shutting down by other means).
    SourceEnded,
    /// A third stop signal forced the exit.
    ForcedExit,
}

/// The shutdown state machine.
#[derive(Debug)]
pub struct SignalHandler<C> {
    control: C,
    drain_time: Duration,
}

impl<C: ShutdownControl> SignalHandler<C> {
    /// A handler that waits `drain_time` (`--drain-time`) between failing health checks and
    /// stopping Envoy.
    pub fn new(control: C, drain_time: Duration) -> Self {
        SignalHandler {
            control,
            drain_time,
        }
    }

    /// Acts on `events` until they end or a third stop signal forces the exit.
    pub async fn run<S>(self, events: S) -> SignalsOutcome
    where
        S: Stream<Item = SignalEvent>,
    {
        let mut events = pin!(events);
        let control = &self.control;

        // Running: SIGUSR2 drains inbound listeners once; the first stop signal moves on.
        let mut drained = false;
        let first = loop {
            match events.next().await {
                None => return SignalsOutcome::SourceEnded,
                Some(SignalEvent::User2) if drained => {
                    tracing::info!("received SIGUSR2, inbound listeners already drained");
                }
                Some(SignalEvent::User2) => {
                    tracing::info!("received SIGUSR2, draining inbound listeners");
                    match control.drain_inbound().await {
                        Ok(()) => drained = true,
                        Err(error) => {
                            tracing::warn!(%error, "could not drain inbound listeners");
                        }
                    }
                }
                Some(event) => break event,
            }
        };

        // Draining: readiness off, health checks failing, connections given the drain time.
        tracing::info!(
            signal = first.name(),
            "received signal, stopping instance gracefully"
        );
        let mut stop_signals = 1;
        control.set_terminating();
        match control.healthcheck_fail().await {
            Err(error) => {
                tracing::error!(%error, "could not fail Envoy health checks, stopping at once");
            }
            Ok(()) if drained => tracing::info!("already drained, exit immediately"),
            Ok(()) => {
                tracing::info!(drain_time = ?self.drain_time, "waiting for connections to be drained");
                let mut timer = pin!(tokio::time::sleep(self.drain_time));
                loop {
                    tokio::select! {
                        () = &mut timer => break,
                        event = events.next() => match event {
                            // Nothing more will come: let the drain time run out.
                            None => {
                                timer.as_mut().await;
                                break;
                            }
                            Some(event) if event.is_stop() => {
                                stop_signals = 2;
                                tracing::info!(signal = event.name(), "received second signal, stopping instance");
                                break;
                            }
                            // SIGUSR2 means nothing once the agent is stopping.
                            Some(_) => {}
                        },
                    }
                }
            }
        }

        // Stopping: Envoy gets SIGTERM; a third stop signal forces the exit.
        control.stop();
        while let Some(event) = events.next().await {
            if !event.is_stop() {
                continue;
            }
            stop_signals += 1;
            if stop_signals == 2 {
                tracing::info!(
                    signal = event.name(),
                    "received second signal, stopping instance"
                );
            } else {
                tracing::warn!(signal = event.name(), "received third signal, force exit");
                control.force_exit();
                return SignalsOutcome::ForcedExit;
            }
        }
        SignalsOutcome::SourceEnded
    }
}

/// SIGTERM, SIGINT and SIGUSR2 of this process, from the moment of the call (their default
/// actions no longer apply).
pub fn os_signals() -> io::Result<impl Stream<Item = SignalEvent> + Send + Unpin> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut user2 = signal(SignalKind::user_defined2())?;
    Ok(futures_util::stream::poll_fn(move |cx| {
        for (source, event) in [
            (&mut terminate, SignalEvent::Terminate),
            (&mut interrupt, SignalEvent::Interrupt),
            (&mut user2, SignalEvent::User2),
        ] {
            if let Poll::Ready(received) = source.poll_recv(cx) {
                return Poll::Ready(received.map(|()| event));
            }
        }
        Poll::Pending
    }))
}

/// The real [`ShutdownControl`]: the readiness endpoint, Envoy's admin API, and the token that
/// stops the Envoy supervisor (and the agent).
#[derive(Debug, Clone)]
pub struct AgentShutdown {
    pub readiness: Readiness,
    pub admin: AdminClient,
    pub stop: CancellationToken,
}

impl ShutdownControl for AgentShutdown {
    fn set_terminating(&self) {
        self.readiness.set_terminating();
    }

    async fn healthcheck_fail(&self) -> Result<(), AdminError> {
        self.admin.healthcheck_fail().await
    }

    async fn drain_inbound(&self) -> Result<(), AdminError> {
        self.admin.drain_inbound().await
    }

    fn stop(&self) {
        self.stop.cancel();
    }

    fn force_exit(&self) {
        // No destructors run, so Envoy is not stopped here: its parent-death signal (SIGKILL)
        // ends it when this process is gone.
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;
    use crate::envoy::test_support::eventually;

    /// Records every action; `healthcheck_fail` fails when `healthcheck_status` is set.
    #[derive(Debug, Clone, Default)]
    struct FakeControl {
        calls: Arc<Mutex<Vec<&'static str>>>,
        healthcheck_status: Option<u16>,
    }

    impl FakeControl {
        fn calls(&self) -> Vec<&'static str> {
            self.calls.lock().unwrap().clone()
        }

        fn record(&self, call: &'static str) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl ShutdownControl for FakeControl {
        fn set_terminating(&self) {
            self.record("terminating");
        }

        async fn healthcheck_fail(&self) -> Result<(), AdminError> {
            self.record("healthcheck_fail");
            match self.healthcheck_status {
                Some(status) => Err(AdminError::Status { status }),
                None => Ok(()),
            }
        }

        async fn drain_inbound(&self) -> Result<(), AdminError> {
            self.record("drain_inbound");
            Ok(())
        }

        fn stop(&self) {
            self.record("stop");
        }

        fn force_exit(&self) {
            self.record("force_exit");
        }
    }

    /// Runs a handler over a channel; returns the sender and the handler's task.
    fn start(
        control: &FakeControl,
        drain_time: Duration,
    ) -> (
        mpsc::UnboundedSender<SignalEvent>,
        tokio::task::JoinHandle<SignalsOutcome>,
    ) {
        let (events, receiver) = mpsc::unbounded_channel();
        let handler = SignalHandler::new(control.clone(), drain_time);
        let task = tokio::spawn(handler.run(UnboundedReceiverStream::new(receiver)));
        (events, task)
    }

    const LONG_DRAIN: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn first_signal_drains_for_the_drain_time_then_stops() {
        let control = FakeControl::default();
        let drain = Duration::from_millis(300);
        let (events, task) = start(&control, drain);
        let sent = Instant::now();
        events.send(SignalEvent::Terminate).unwrap();
        eventually("stop", || async { control.calls().contains(&"stop") }).await;
        assert!(sent.elapsed() >= drain, "stopped before the drain time");
        assert_eq!(control.calls(), ["terminating", "healthcheck_fail", "stop"]);
        drop(events);
        assert_eq!(task.await.unwrap(), SignalsOutcome::SourceEnded);
    }

    #[tokio::test]
    async fn second_signal_cuts_the_drain_and_third_forces_exit() {
        let control = FakeControl::default();
        let (events, task) = start(&control, LONG_DRAIN);
        events.send(SignalEvent::Interrupt).unwrap();
        eventually("health checks failed", || async {
            control.calls() == ["terminating", "healthcheck_fail"]
        })
        .await;
        events.send(SignalEvent::Terminate).unwrap();
        eventually("stop", || async { control.calls().contains(&"stop") }).await;
        events.send(SignalEvent::Terminate).unwrap();
        assert_eq!(task.await.unwrap(), SignalsOutcome::ForcedExit);
        assert_eq!(
            control.calls(),
            ["terminating", "healthcheck_fail", "stop", "force_exit"]
        );
    }

    #[tokio::test]
    async fn third_signal_counts_signals_received_after_the_drain() {
        let control = FakeControl::default();
        let (events, task) = start(&control, Duration::from_millis(10));
        events.send(SignalEvent::Terminate).unwrap();
        eventually("stop", || async { control.calls().contains(&"stop") }).await;
        events.send(SignalEvent::Terminate).unwrap();
        events.send(SignalEvent::User2).unwrap();
        events.send(SignalEvent::Interrupt).unwrap();
        assert_eq!(task.await.unwrap(), SignalsOutcome::ForcedExit);
        assert_eq!(
            control.calls(),
            ["terminating", "healthcheck_fail", "stop", "force_exit"]
        );
    }

    #[tokio::test]
    async fn failing_health_checks_stop_at_once() {
        let control = FakeControl {
            healthcheck_status: Some(500),
            ..FakeControl::default()
        };
        let (events, task) = start(&control, LONG_DRAIN);
        events.send(SignalEvent::Terminate).unwrap();
        eventually("stop", || async { control.calls().contains(&"stop") }).await;
        assert_eq!(control.calls(), ["terminating", "healthcheck_fail", "stop"]);
        drop(events);
        assert_eq!(task.await.unwrap(), SignalsOutcome::SourceEnded);
    }

    #[tokio::test]
    async fn sigusr2_drains_once_and_a_later_stop_skips_the_wait() {
        let control = FakeControl::default();
        let (events, task) = start(&control, LONG_DRAIN);
        events.send(SignalEvent::User2).unwrap();
        events.send(SignalEvent::User2).unwrap();
        eventually("drain", || async { control.calls() == ["drain_inbound"] }).await;
        events.send(SignalEvent::Terminate).unwrap();
        eventually("stop", || async { control.calls().contains(&"stop") }).await;
        assert_eq!(
            control.calls(),
            ["drain_inbound", "terminating", "healthcheck_fail", "stop"]
        );
        drop(events);
        assert_eq!(task.await.unwrap(), SignalsOutcome::SourceEnded);
    }

    #[tokio::test]
    async fn sigusr2_is_ignored_once_stopping() {
        let control = FakeControl::default();
        let (events, task) = start(&control, Duration::from_millis(200));
        events.send(SignalEvent::Terminate).unwrap();
        events.send(SignalEvent::User2).unwrap();
        eventually("stop", || async { control.calls().contains(&"stop") }).await;
        events.send(SignalEvent::User2).unwrap();
        drop(events);
        assert_eq!(task.await.unwrap(), SignalsOutcome::SourceEnded);
        assert_eq!(control.calls(), ["terminating", "healthcheck_fail", "stop"]);
    }

    #[tokio::test]
    async fn no_signal_no_action() {
        let control = FakeControl::default();
        let (events, task) = start(&control, LONG_DRAIN);
        drop(events);
        assert_eq!(task.await.unwrap(), SignalsOutcome::SourceEnded);
        assert!(control.calls().is_empty());
    }

    #[tokio::test]
    async fn os_signals_delivers_sigusr2() {
        let mut events = os_signals().unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR2).unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap();
        assert_eq!(event, Some(SignalEvent::User2));
    }
}
