"""A small file API over local folders and ``s3://`` URLs, for what MDSWriter does not do.

Conversion needs a few operations beyond writing shards: read and write small JSON files
(done markers, the conversion manifest, the merged index), list and delete a part's files
when it is redone, and read input files that live in a bucket. Local paths and ``s3://``
(boto3, honouring ``S3_ENDPOINT_URL`` as streaming does) are supported; other schemes get a
clear error rather than a half-working path.

Writes of small files are atomic: local files are written to a temporary name and renamed,
and an S3 PUT is atomic by definition, so a reader sees the old object or the new one, never
a torn one.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import IO, Iterator

from foundry.data.errors import DataError

__all__ = ['is_url', 'join', 'read_bytes', 'write_bytes', 'exists', 'size_of', 'list_files',
           'delete_tree', 'delete_file', 'open_binary', 'describe_s3_error', 's3_client', 'FileEntry']

_SUPPORTED_SCHEMES = ('s3',)


def is_url(path: str) -> bool:
    return '://' in path


def _split_s3(url: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in _SUPPORTED_SCHEMES:
        raise DataError(f'{url!r}: only local paths and s3:// URLs are supported here (set '
                        'S3_ENDPOINT_URL for S3-compatible stores such as MinIO or R2).')
    if not parsed.netloc:
        raise DataError(f'{url!r} names no bucket; write s3://BUCKET/PREFIX.')
    return parsed.netloc, parsed.path.lstrip('/')


def join(base: str, *parts: str) -> str:
    if is_url(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


_clients: dict[tuple, object] = {}


def s3_client():
    """A boto3 S3 client for this process and environment (S3_ENDPOINT_URL when set)."""
    key = (os.getpid(), os.environ.get('S3_ENDPOINT_URL'), os.environ.get('AWS_ACCESS_KEY_ID'),
           os.environ.get('AWS_PROFILE'))
    if key not in _clients:
        import boto3
        from botocore.config import Config

        config = Config(retries={'max_attempts': 5, 'mode': 'standard'})
        _clients[key] = boto3.session.Session().client(
            's3', endpoint_url=os.environ.get('S3_ENDPOINT_URL') or None, config=config)
    return _clients[key]


def describe_s3_error(err: BaseException, bucket: str, key: str) -> str:
    """A one-line reason for a failed S3 call that names the bucket and key."""
    code = ''
    response = getattr(err, 'response', None)
    if isinstance(response, dict):
        code = str(response.get('Error', {}).get('Code', ''))
    endpoint = os.environ.get('S3_ENDPOINT_URL') or 'AWS default endpoint'
    where = f'bucket {bucket!r}, key {key!r}'
    if code in ('NoSuchBucket',):
        return f'bucket {bucket!r} does not exist ({where}, endpoint {endpoint})'
    if code in ('404', 'NoSuchKey', 'NotFound'):
        return f'object not found ({where}, endpoint {endpoint})'
    if code in ('403', 'AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch'):
        return (f'access denied ({where}, endpoint {endpoint}); check AWS credentials and '
                'bucket permissions')
    name = type(err).__name__
    if 'EndpointConnectionError' in name or 'ConnectionError' in name:
        return f'cannot reach the S3 endpoint {endpoint} ({where}): {err}'
    if 'NoCredentialsError' in name:
        return f'no AWS credentials found ({where}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY'
    return f'{name}: {err} ({where}, endpoint {endpoint})'


def _s3_call(fn, url: str, *args, **kwargs):
    bucket, key = _split_s3(url)
    try:
        return fn(bucket, key, *args, **kwargs)
    except DataError:
        raise
    except FileNotFoundError:
        raise
    except Exception as err:
        if _is_not_found(err):
            raise FileNotFoundError(url) from err
        raise DataError(f'S3 request for {url} failed: {describe_s3_error(err, bucket, key)}') \
            from err


def _is_not_found(err: BaseException) -> bool:
    response = getattr(err, 'response', None)
    if isinstance(response, dict):
        return str(response.get('Error', {}).get('Code', '')) in ('404', 'NoSuchKey', 'NotFound')
    return False


def read_bytes(path: str) -> bytes:
    """The whole file; FileNotFoundError if it does not exist."""
    if is_url(path):
        return _s3_call(lambda b, k: s3_client().get_object(Bucket=b, Key=k)['Body'].read(), path)
    with open(path, 'rb') as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically: a concurrent reader sees the old file or the new one, never a torn one."""
    if is_url(path):
        _s3_call(lambda b, k: s3_client().put_object(Bucket=b, Key=k, Body=data), path)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def size_of(path: str) -> int:
    """Size in bytes; FileNotFoundError if absent."""
    if is_url(path):
        return int(_s3_call(lambda b, k: s3_client().head_object(Bucket=b, Key=k), path)
                   ['ContentLength'])
    return os.path.getsize(path)


def exists(path: str) -> bool:
    try:
        size_of(path)
        return True
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        return True


@dataclass(frozen=True)
class FileEntry:
    path: str       # full path or URL
    size: int
    version: str    # mtime (local) or ETag (S3): changes when the content does


def list_files(root: str) -> list[FileEntry]:
    """Every file under ``root`` (recursively), sorted by path. Hidden names are skipped."""
    if is_url(root):
        bucket, prefix = _split_s3(root)
        if prefix and not prefix.endswith('/'):
            prefix += '/'
        out = []
        try:
            paginator = s3_client().get_paginator('list_objects_v2')
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get('Contents', []):
                    name = obj['Key'][len(prefix):]
                    if any(p.startswith('.') for p in name.split('/')):
                        continue
                    out.append(FileEntry(f's3://{bucket}/{obj["Key"]}', int(obj['Size']),
                                         str(obj.get('ETag', '')).strip('"')))
        except Exception as err:
            raise DataError(f'could not list {root}: {describe_s3_error(err, bucket, prefix)}') \
                from err
        return sorted(out, key=lambda e: e.path)
    root = os.path.expanduser(root)
    if os.path.isfile(root):
        st = os.stat(root)
        return [FileEntry(root, st.st_size, str(st.st_mtime_ns))]
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        for name in files:
            if name.startswith('.'):
                continue
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            out.append(FileEntry(full, st.st_size, str(st.st_mtime_ns)))
    return sorted(out, key=lambda e: e.path)


def delete_tree(root: str) -> None:
    """Remove a folder / every object under a prefix. Missing is fine."""
    if is_url(root):
        bucket, prefix = _split_s3(root)
        if prefix and not prefix.endswith('/'):
            prefix += '/'
        client = s3_client()
        try:
            paginator = client.get_paginator('list_objects_v2')
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                keys = [{'Key': obj['Key']} for obj in page.get('Contents', [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={'Objects': keys})
        except Exception as err:
            raise DataError(f'could not delete {root}: {describe_s3_error(err, bucket, prefix)}') \
                from err
        return
    shutil.rmtree(root, ignore_errors=True)


def delete_file(path: str) -> None:
    """Remove one file / object. Missing is fine."""
    if is_url(path):
        _s3_call(lambda b, k: s3_client().delete_object(Bucket=b, Key=k), path)
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_binary(path: str) -> IO[bytes]:
    """A readable binary stream: a local file, or an S3 object streamed (not downloaded first)."""
    if is_url(path):
        body = _s3_call(lambda b, k: s3_client().get_object(Bucket=b, Key=k)['Body'], path)
        return _S3Stream(body)
    return open(path, 'rb')


class _S3Stream:
    """Just enough of a file object over a botocore StreamingBody for gzip/zstd/line reading."""

    def __init__(self, body) -> None:
        self._body = body

    def read(self, n: int = -1) -> bytes:
        return self._body.read() if n is None or n < 0 else self._body.read(n)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body.iter_lines(keepends=True))
