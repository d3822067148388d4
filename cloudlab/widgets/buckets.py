"""The bucket browser: pick a bucket of the cloud's object store, see its objects, upload a file from the
browser (ipywidgets' FileUpload) and get a shareable presigned link to an object."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import pandas as pd

from cloudlab.client import Cloud
from cloudlab.widgets._common import Panel

MAX_ROWS = 200


def objects_html(df: pd.DataFrame) -> str:
    if df.empty:
        return "<i>no objects</i>"
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{c}</th>" for c in ("key", "size", "modified"))
    rows = []
    for row in df.head(MAX_ROWS).to_dict("records"):
        modified = row["modified"].strftime("%Y-%m-%d %H:%M:%S") if hasattr(row["modified"], "strftime") else ""
        rows.append(f"<tr><td style='padding:2px 8px'>{html.escape(row['key'])}</td>"
                    f"<td style='padding:2px 8px;text-align:right'>{row['size']:,}</td>"
                    f"<td style='padding:2px 8px'>{modified}</td></tr>")  # fmt: skip
    more = f"<i>and {len(df) - MAX_ROWS} more</i>" if len(df) > MAX_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


class BucketBrowser(Panel):
    """``BucketBrowser(cloud, bucket=None)``: ``bucket`` (a Dropdown of the user's buckets), ``prefix``,
    ``refresh()`` (objects into ``rows`` and the HTML ``table``), ``files`` (a FileUpload) and
    ``upload_button.click()`` to store the chosen files under the prefix; ``new_bucket`` + ``create_button``
    to make a bucket; ``link(key)`` a presigned GET URL for an hour."""

    def __init__(self, cloud: Cloud | None = None, bucket: str | None = None, state: str | None = None) -> None:
        super().__init__(cloud, state)
        self.rows = pd.DataFrame(columns=["key", "size", "modified", "etag"])
        self.bucket = widgets.Dropdown(description="bucket", options=[])
        self.prefix = widgets.Text(description="prefix", placeholder="folder/ (optional)")
        self.table = widgets.HTML()
        self.files = widgets.FileUpload(description="choose files", multiple=True)
        self.upload_button = widgets.Button(description="upload", icon="upload")
        self.refresh_button = widgets.Button(description="refresh", icon="refresh")
        self.new_bucket = widgets.Text(description="new bucket", placeholder="my-results")
        self.create_button = widgets.Button(description="create")
        self.upload_button.on_click(lambda _: self.guard(self.upload))
        self.refresh_button.on_click(lambda _: self.guard(self.refresh))
        self.create_button.on_click(lambda _: self.guard(self.create))
        self.bucket.observe(lambda change: self.guard(self.refresh) if change["name"] == "value" else None, "value")
        self.widget = widgets.VBox([
            widgets.HBox([self.bucket, self.prefix, self.refresh_button]),
            widgets.HBox([self.files, self.upload_button]),
            widgets.HBox([self.new_bucket, self.create_button]),
            self.table,
            self.message,
        ])  # fmt: skip
        self.guard(lambda: self.load_buckets(bucket))

    def load_buckets(self, choose: str | None = None) -> None:
        names = list(self.cloud.buckets()["bucket"])
        self.bucket.options = names
        if choose in names:
            self.bucket.value = choose
        elif names and self.bucket.value not in names:
            self.bucket.value = names[0]
        self.refresh()

    def refresh(self) -> None:
        if not self.bucket.value:
            self.rows = pd.DataFrame(columns=["key", "size", "modified", "etag"])
            self.table.value = "<i>no bucket: create one below</i>"
            return
        self.rows = self.cloud.objects(self.bucket.value, self.prefix.value)
        self.table.value = objects_html(self.rows)
        self.say(f"{len(self.rows)} object(s) in {self.bucket.value}/{self.prefix.value}")

    def create(self) -> None:
        name = self.new_bucket.value.strip()
        self.cloud.s3.create_bucket(Bucket=name)
        self.new_bucket.value = ""
        self.load_buckets(name)
        self.say(f"created bucket {name}", "ok")

    def upload(self, files: list[dict[str, Any]] | None = None) -> list[str]:
        """Store the FileUpload's files (or ``files``: dicts with ``name`` and ``content``) under the prefix."""
        chosen = list(files if files is not None else self.files.value)
        if not self.bucket.value:
            raise ValueError("choose or create a bucket first")
        if not chosen:
            raise ValueError("choose a file to upload first")
        keys = []
        for item in chosen:
            key = f"{self.prefix.value}{item['name']}"
            self.cloud.s3.put_object(Bucket=self.bucket.value, Key=key, Body=bytes(item["content"]),
                                     ContentType=item.get("type") or "application/octet-stream")  # fmt: skip
            keys.append(key)
        self.files.value = ()
        self.refresh()
        self.say(f"uploaded {', '.join(keys)}", "ok")
        return keys

    def link(self, key: str, expires_s: int = 3600) -> str:
        return self.cloud.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket.value, "Key": key},
                                                    ExpiresIn=expires_s)  # fmt: skip
