//! Where the lake lives: a local directory or an S3 bucket and prefix, and the
//! lake's naming rules (`<root>/<topic>/dt=YYYY-MM-DD/<topic>+<partition>+<first offset>.parquet`).
//!
//! A write is durable when `put` returns: on disk the file is written beside its
//! final name, fsynced, renamed into place and the directory fsynced; on S3 a PUT
//! is atomic and durable once answered. Rewriting a name replaces the file whole.

use std::fs;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

#[derive(Clone)]
enum Backend {
    Local(PathBuf),
    S3 { bucket: String, s3: Arc<AmazonS3> },
}

/// An opened lake location.
#[derive(Clone)]
pub struct Lake {
    backend: Backend,
    /// The store rooted at the lake (local: the directory; S3: the bucket).
    store: Arc<dyn ObjectStore>,
    /// Prefix inside the store (empty for a local directory).
    prefix: Path,
    url: String,
}

/// One lake file's identity, parsed from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    pub topic: String,
    /// `None` for lakes written with `--partition-by none`.
    pub dt: Option<String>,
    pub partition: i32,
    pub first_offset: i64,
}

impl FileName {
    /// Path relative to the lake root.
    pub fn relative(&self) -> String {
        let file = format!(
            "{}+{}+{:020}.parquet",
            self.topic, self.partition, self.first_offset
        );
        match &self.dt {
            Some(dt) => format!("{}/dt={dt}/{file}", self.topic),
            None => format!("{}/{file}", self.topic),
        }
    }

    /// Parses a path relative to the lake root; `None` for files that are not the sink's.
    pub fn parse(relative: &str) -> Option<FileName> {
        let parts: Vec<&str> = relative.split('/').collect();
        let (topic, dt, file) = match parts.as_slice() {
            [topic, dt, file] => (*topic, Some(dt.strip_prefix("dt=")?.to_string()), *file),
            [topic, file] => (*topic, None, *file),
            _ => return None,
        };
        let stem = file.strip_suffix(".parquet")?;
        let mut fields = stem.rsplitn(3, '+');
        let first_offset = fields.next()?.parse().ok()?;
        let partition = fields.next()?.parse().ok()?;
        (fields.next()? == topic).then(|| FileName {
            topic: topic.to_string(),
            dt,
            partition,
            first_offset,
        })
    }
}

impl Lake {
    /// Opens `s3://bucket/prefix`, `file:///abs/dir` or a plain directory path.
    /// S3 settings come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY and AWS_REGION (default us-east-1).
    pub fn open(url: &str) -> Result<Lake> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("{url} names no bucket; use s3://bucket/prefix");
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                builder = builder.with_region("us-east-1");
            }
            if let Ok(region) = std::env::var("AWS_REGION") {
                builder = builder.with_region(region);
            }
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok();
            if endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"))
            {
                builder = builder.with_allow_http(true);
            }
            let s3 = Arc::new(
                builder
                    .build()
                    .map_err(|e| anyhow!("cannot use {url}: {e}"))?,
            );
            return Ok(Lake {
                backend: Backend::S3 {
                    bucket: bucket.to_string(),
                    s3: s3.clone(),
                },
                store: s3,
                prefix: Path::from(prefix.trim_matches('/')),
                url: url.to_string(),
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            bail!("unsupported lake URL {url}; use s3://bucket/prefix, file:///dir or a directory path");
        }
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create lake directory {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let store = Arc::new(LocalFileSystem::new_with_prefix(&dir)?);
        Ok(Lake {
            backend: Backend::Local(dir),
            store,
            prefix: Path::default(),
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object store and the lake's prefix in it, for readers such as DataFusion.
    pub fn store(&self) -> (Arc<dyn ObjectStore>, &Path) {
        (self.store.clone(), &self.prefix)
    }

    /// For an S3 lake, the URL (`s3://bucket`) a reader registers the store under.
    pub fn store_url(&self) -> Option<String> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::S3 { bucket, .. } => Some(format!("s3://{bucket}")),
        }
    }

    /// The table path of `topic` in that store, as a URL DataFusion lists.
    pub fn table_url(&self, topic: &str) -> String {
        match &self.backend {
            Backend::Local(dir) => format!("file://{}/{topic}/", dir.display()),
            Backend::S3 { bucket, .. } => {
                let prefix = self.prefix.as_ref();
                if prefix.is_empty() {
                    format!("s3://{bucket}/{topic}/")
                } else {
                    format!("s3://{bucket}/{prefix}/{topic}/")
                }
            }
        }
    }

    fn object_path(&self, relative: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(relative)
        } else {
            Path::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// Writes a whole file durably (see the module doc), replacing any file of that name.
    pub async fn put(&self, relative: &str, contents: Bytes) -> Result<()> {
        match &self.backend {
            Backend::Local(dir) => {
                let target = dir.join(relative);
                let contents = contents.clone();
                tokio::task::spawn_blocking(move || write_durably(&target, &contents))
                    .await?
                    .with_context(|| format!("cannot write {relative} in the lake"))
            }
            Backend::S3 { .. } => {
                self.store
                    .put(&self.object_path(relative), contents.into())
                    .await
                    .map_err(|e| anyhow!("cannot upload {relative} to {}: {e}", self.url))?;
                Ok(())
            }
        }
    }

    /// Deletes a file durably; a file already gone is no error.
    pub async fn remove(&self, relative: &str) -> Result<()> {
        let cannot =
            |e: &dyn std::fmt::Display| anyhow!("cannot delete {relative} in {}: {e}", self.url);
        match &self.backend {
            Backend::Local(dir) => {
                let target = dir.join(relative);
                tokio::task::spawn_blocking(move || remove_durably(&target))
                    .await?
                    .map_err(|e| cannot(&e))
            }
            Backend::S3 { .. } => match self.store.delete(&self.object_path(relative)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(cannot(&e)),
            },
        }
    }

    /// Reads a whole file.
    pub async fn get(&self, relative: &str) -> Result<Bytes> {
        let result = self.store.get(&self.object_path(relative)).await?;
        Ok(result.bytes().await?)
    }

    /// The Arrow schema of a lake file, from its Parquet footer alone (two range reads).
    pub async fn file_schema(&self, relative: &str, size: u64) -> Result<arrow_schema::SchemaRef> {
        let location = self.object_path(relative);
        let unreadable = || anyhow!("{relative} is not a readable Parquet file");
        if size < 12 {
            return Err(unreadable());
        }
        let tail = self.store.get_range(&location, size - 8..size).await?;
        if &tail[4..] != b"PAR1" {
            return Err(unreadable());
        }
        let length = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
        let start = size.checked_sub(8 + length).ok_or_else(unreadable)?;
        let footer = self.store.get_range(&location, start..size - 8).await?;
        let metadata = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer)
            .map_err(|_| unreadable())?;
        let file = metadata.file_metadata();
        let schema =
            parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
                .map_err(|_| unreadable())?;
        Ok(Arc::new(schema))
    }

    /// The sink's files under the lake (optionally one topic's), sorted by name, with sizes.
    pub async fn list(&self, topic: Option<&str>) -> Result<Vec<(FileName, u64)>> {
        use futures_util::TryStreamExt;
        let base = match topic {
            Some(t) => self.object_path(t),
            None => self.prefix.clone(),
        };
        let objects: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| anyhow!("cannot list {}: {e}", self.url))?;
        let skip = if self.prefix.as_ref().is_empty() {
            0
        } else {
            self.prefix.as_ref().len() + 1
        };
        let mut files: Vec<(FileName, u64)> = objects
            .into_iter()
            .filter_map(|o| FileName::parse(o.location.as_ref().get(skip..)?).map(|f| (f, o.size)))
            .collect();
        files.sort_by_key(|f| f.0.relative());
        Ok(files)
    }

    /// Creates the S3 bucket when it does not exist (no-op for a local lake).
    pub async fn ensure_bucket(&self) -> Result<()> {
        let Backend::S3 { bucket, s3 } = &self.backend else {
            return Ok(());
        };
        use object_store::signer::Signer;
        if self.store.list_with_delimiter(None).await.is_ok() {
            return Ok(());
        }
        // object_store has no CreateBucket; a presigned PUT on the bucket root is one.
        let url = s3
            .signed_url(
                reqwest::Method::PUT,
                &Path::default(),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| anyhow!("cannot sign the request creating bucket {bucket}: {e}"))?;
        let response = reqwest::Client::new()
            .put(url)
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach S3 to create bucket {bucket}: {e}"))?;
        if !response.status().is_success() && response.status().as_u16() != 409 {
            bail!(
                "creating bucket {bucket} failed: HTTP {}",
                response.status()
            );
        }
        Ok(())
    }
}

/// Write, fsync, rename into place, fsync the directory: a crash leaves the old
/// file or the new one, never a torn one.
fn write_durably(target: &FsPath, contents: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().expect("lake files live in a directory");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("part")
    ));
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, target)?;
    fs::File::open(dir)?.sync_all()
}

fn remove_durably(target: &FsPath) -> std::io::Result<()> {
    match fs::remove_file(target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let dir = target.parent().expect("lake files live in a directory");
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let name = FileName {
            topic: "music+events".into(),
            dt: Some("2024-05-01".into()),
            partition: 2,
            first_offset: 1234,
        };
        assert_eq!(
            name.relative(),
            "music+events/dt=2024-05-01/music+events+2+00000000000000001234.parquet"
        );
        assert_eq!(FileName::parse(&name.relative()), Some(name));
        let flat = FileName {
            topic: "t".into(),
            dt: None,
            partition: 0,
            first_offset: 0,
        };
        assert_eq!(FileName::parse(&flat.relative()), Some(flat));
        assert_eq!(FileName::parse("t/dt=2024-05-01/other+0+1.parquet"), None);
        assert_eq!(FileName::parse("t/dt=2024-05-01/.t+0+1.parquet.tmp"), None);
    }

    #[tokio::test]
    async fn local_files_are_replaced_whole_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let name = FileName {
            topic: "t".into(),
            dt: Some("2024-01-02".into()),
            partition: 1,
            first_offset: 5,
        };
        lake.put(&name.relative(), Bytes::from_static(b"first"))
            .await
            .unwrap();
        lake.put(&name.relative(), Bytes::from_static(b"second"))
            .await
            .unwrap();
        assert_eq!(
            lake.get(&name.relative()).await.unwrap(),
            Bytes::from_static(b"second")
        );
        std::fs::write(dir.path().join("t/notes.txt"), "not a lake file").unwrap();
        let listed = lake.list(Some("t")).await.unwrap();
        assert_eq!(listed, vec![(name.clone(), 6)]);
        lake.remove(&name.relative()).await.unwrap();
        lake.remove(&name.relative()).await.unwrap();
        assert_eq!(lake.list(Some("t")).await.unwrap(), vec![]);
        assert!(Lake::open("ftp://x").is_err());
    }
}
