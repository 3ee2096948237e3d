//! The worker behind an encoder or an encoder-decoder: one thread that runs each
//! request's task (embed, classify, translate) in arrival order, so requests never
//! compete for the two cores and a slow one cannot starve the HTTP threads.

use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::error::{ApiError, ApiResult};
use super::queue::Queue;

type Task = Box<dyn FnOnce() + Send>;

pub struct TaskWorker {
    tx: mpsc::Sender<Task>,
    pub queue: Arc<Queue>,
}

impl TaskWorker {
    pub fn spawn(queue: Arc<Queue>) -> Self {
        let (tx, rx) = mpsc::channel::<Task>();
        let q = queue.clone();
        std::thread::Builder::new()
            .name("wick-tasks".into())
            .spawn(move || {
                for task in rx {
                    q.leave();
                    q.set_active(1);
                    task();
                    q.set_active(0);
                }
            })
            .expect("spawning the model thread");
        Self { tx, queue }
    }

    /// Runs `f` on the worker once the requests before it are done. The caller has
    /// taken a place with [`Queue::enter`]. A request whose client has gone is skipped.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let (tx, rx) = oneshot::channel();
        let task: Task = Box::new(move || {
            if !tx.is_closed() {
                let _ = tx.send(f());
            }
        });
        if self.tx.send(task).is_err() {
            self.queue.leave();
            return Err(ApiError::internal("the model's worker has stopped"));
        }
        rx.await
            .map_err(|_| ApiError::internal("the model's worker dropped the request"))?
    }
}
