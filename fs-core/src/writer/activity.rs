//! Which part numbers each upload has used in this process, and which part uploads are still
//! running, across writer instances.
//!
//! A writer dropped while parts are in flight cancels their tasks, but a store call already
//! under way may still land. A writer that resumes the same upload in this process must not
//! pick a part number such a late upload could overwrite: it waits for the earlier writer's
//! uploads to end and numbers its parts above every number used before. (Across processes
//! the store's part ETags, checked at CompleteMultipartUpload, catch what this cannot see.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct UploadActivity {
    highest_allocated: u32,
    running: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Activity {
    uploads: Mutex<HashMap<String, UploadActivity>>,
    changed: tokio::sync::Notify,
}

impl Activity {
    fn with<T>(&self, upload_id: &str, f: impl FnOnce(&mut UploadActivity) -> T) -> T {
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        f(uploads.entry(upload_id.to_string()).or_default())
    }

    /// Notes that part `number` of the upload was handed out.
    pub(crate) fn allocated(&self, upload_id: &str, number: u32) {
        self.with(upload_id, |a| {
            a.highest_allocated = a.highest_allocated.max(number)
        });
    }

    /// The highest part number handed out for the upload in this process (0 if none).
    pub(crate) fn highest_allocated(&self, upload_id: &str) -> u32 {
        self.with(upload_id, |a| a.highest_allocated)
    }

    /// Marks a part upload as running until the guard is dropped.
    pub(crate) fn start(self: &Arc<Self>, upload_id: &str) -> RunningUpload {
        self.with(upload_id, |a| a.running += 1);
        RunningUpload {
            activity: self.clone(),
            upload_id: upload_id.to_string(),
        }
    }

    /// Waits until no part upload of the upload runs in this process.
    pub(crate) async fn quiesce(&self, upload_id: &str) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.with(upload_id, |a| a.running) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Forgets an upload that was completed or aborted.
    pub(crate) fn forget(&self, upload_id: &str) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if uploads.get(upload_id).is_some_and(|a| a.running == 0) {
            uploads.remove(upload_id);
        }
    }
}

/// A running part upload; dropping it (the task ended or was cancelled) ends it.
pub(crate) struct RunningUpload {
    activity: Arc<Activity>,
    upload_id: String,
}

impl Drop for RunningUpload {
    fn drop(&mut self) {
        self.activity
            .with(&self.upload_id, |a| a.running = a.running.saturating_sub(1));
        self.activity.changed.notify_waiters();
    }
}
