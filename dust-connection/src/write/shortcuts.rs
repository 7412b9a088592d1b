//! The write shortcuts (`set`/`put`, `delete`, `merge`, `increment`, `add`, `remove`) of the
//! handles that have a `write(WriteRequest)` method: [`Store`](crate::Store) and
//! [`SyncedStore`](crate::SyncedStore) share them through this macro.

/// Expands, inside an `impl` whose type has
/// `fn write(&self, WriteRequest) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static`,
/// to its shortcuts; `$set` names the `set` shortcut (`set` on `Store`, `put` on `SyncedStore`).
/// The caller's module imports `Future`, `Value`, `IntoSegments`, `WriteAck`, `WriteError` and
/// `WriteRequest`.
macro_rules! write_shortcuts {
    ($set:ident) => {
        /// Sets `value` at `path`.
        pub fn $set(
            &self,
            path: impl IntoSegments,
            value: impl Into<Value>,
        ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
            self.write(WriteRequest::set(path, value))
        }

        /// Deletes `path` and everything below it.
        pub fn delete(
            &self,
            path: impl IntoSegments,
        ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
            self.write(WriteRequest::delete(path))
        }

        /// Merges the map `value` into `path`.
        pub fn merge(
            &self,
            path: impl IntoSegments,
            value: impl Into<Value>,
        ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
            self.write(WriteRequest::merge(path, value))
        }

        /// Adds `by` to the counter at `path`; the ack's `store_seq` is the op's seq.
        pub fn increment(
            &self,
            path: impl IntoSegments,
            by: impl Into<Value>,
        ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
            self.write(WriteRequest::increment(path, by))
        }

        /// Adds `member` to the set at `path`.
        pub fn add(
            &self,
            path: impl IntoSegments,
            member: impl Into<Value>,
        ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
            self.write(WriteRequest::add(path, member))
        }

        /// Removes `member` from the set at `path`.
        pub fn remove(
            &self,
            path: impl IntoSegments,
            member: impl Into<Value>,
        ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
            self.write(WriteRequest::remove(path, member))
        }
    };
}

pub(crate) use write_shortcuts;
