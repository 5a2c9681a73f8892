//! The standard object headers (Content-Type, Content-Encoding, Content-Disposition,
//! Content-Language, Cache-Control, Expires): taken from a write, kept by the store as
//! [`ContentHeaders`], given back on GET and HEAD, where a request's `response-*` parameters
//! override them as S3 does.

use s3s::dto::{self, Timestamp, TimestampFormat};

use fs_core::store::ContentHeaders;

/// What S3 answers as the Content-Type of an object written without one.
pub const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";

/// The standard headers of a write request (PutObject, CreateMultipartUpload, CopyObject with
/// the REPLACE directive): the same six fields on each input type.
macro_rules! request_headers {
    ($input:expr) => {
        fs_core::store::ContentHeaders {
            content_type: $input.content_type,
            content_encoding: $input.content_encoding,
            content_disposition: $input.content_disposition,
            content_language: $input.content_language,
            cache_control: $input.cache_control,
            expires: $crate::headers::expires_text($input.expires.as_ref()),
        }
    };
}
pub(crate) use request_headers;

/// Sets an object's standard headers on a GetObject or HeadObject answer (two types, same
/// fields), with S3's default Content-Type for an object that has none.
macro_rules! set_object_headers {
    ($output:expr, $headers:expr) => {{
        let shown = $crate::headers::shown($headers);
        $output.content_type = shown.content_type;
        $output.content_encoding = shown.content_encoding;
        $output.content_disposition = shown.content_disposition;
        $output.content_language = shown.content_language;
        $output.cache_control = shown.cache_control;
        $output.expires = $crate::headers::expires_time(shown.expires.as_deref());
    }};
}
pub(crate) use set_object_headers;

/// Takes a GetObject's or HeadObject's `response-*` parameters out of its input, as the
/// headers the answer carries instead of the object's own (S3 allows them on signed requests,
/// typically presigned download links).
macro_rules! take_overrides {
    ($input:expr) => {
        fs_core::store::ContentHeaders {
            content_type: $input.response_content_type.take(),
            content_encoding: $input.response_content_encoding.take(),
            content_disposition: $input.response_content_disposition.take(),
            content_language: $input.response_content_language.take(),
            cache_control: $input.response_cache_control.take(),
            expires: $crate::headers::expires_text($input.response_expires.take().as_ref()),
        }
    };
}
pub(crate) use take_overrides;

/// Puts the overrides a request asked for on its answer.
macro_rules! apply_overrides {
    ($output:expr, $overrides:expr) => {{
        let o: fs_core::store::ContentHeaders = $overrides;
        if o.content_type.is_some() {
            $output.content_type = o.content_type;
        }
        if o.content_encoding.is_some() {
            $output.content_encoding = o.content_encoding;
        }
        if o.content_disposition.is_some() {
            $output.content_disposition = o.content_disposition;
        }
        if o.content_language.is_some() {
            $output.content_language = o.content_language;
        }
        if o.cache_control.is_some() {
            $output.cache_control = o.cache_control;
        }
        if o.expires.is_some() {
            $output.expires = $crate::headers::expires_time(o.expires.as_deref());
        }
    }};
}
pub(crate) use apply_overrides;

/// The headers an object shows: its own, with S3's default Content-Type when it has none.
pub fn shown(headers: &ContentHeaders) -> ContentHeaders {
    let mut shown = headers.clone();
    shown
        .content_type
        .get_or_insert_with(|| DEFAULT_CONTENT_TYPE.to_string());
    shown
}

/// An `Expires` time as the HTTP date the store keeps.
pub fn expires_text(expires: Option<&dto::Expires>) -> Option<String> {
    let mut text = Vec::new();
    expires?.format(TimestampFormat::HttpDate, &mut text).ok()?;
    String::from_utf8(text).ok()
}

/// A kept `Expires` back as a time; `None` for text that is no HTTP date (written to the
/// backend by some other client), which the answer then leaves out.
pub fn expires_time(text: Option<&str>) -> Option<Timestamp> {
    Timestamp::parse(TimestampFormat::HttpDate, text?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_round_trips_as_an_http_date() {
        let time = expires_time(Some("Wed, 01 Jan 2031 00:00:00 GMT")).unwrap();
        assert_eq!(
            expires_text(Some(&time)).as_deref(),
            Some("Wed, 01 Jan 2031 00:00:00 GMT")
        );
        assert!(expires_time(Some("next tuesday")).is_none());
        assert!(expires_time(None).is_none());
    }

    #[test]
    fn an_object_without_a_content_type_shows_s3s_default() {
        assert_eq!(
            shown(&ContentHeaders::default()).content_type.as_deref(),
            Some(DEFAULT_CONTENT_TYPE)
        );
        let typed = ContentHeaders::with_type("text/csv");
        assert_eq!(shown(&typed), typed);
    }

    #[test]
    fn response_parameters_override_the_objects_headers() {
        let headers = ContentHeaders {
            content_type: Some("text/csv".into()),
            content_disposition: Some("inline".into()),
            cache_control: Some("no-cache".into()),
            ..ContentHeaders::default()
        };
        let mut input = dto::GetObjectInput::builder()
            .bucket("b".into())
            .key("k".into())
            .response_content_disposition(Some("attachment; filename=\"x.csv\"".into()))
            .build()
            .unwrap();
        let overrides = take_overrides!(input);
        assert!(input.response_content_disposition.is_none());
        let mut output = dto::GetObjectOutput::default();
        set_object_headers!(output, &headers);
        apply_overrides!(output, overrides);
        assert_eq!(output.content_type.as_deref(), Some("text/csv"));
        assert_eq!(
            output.content_disposition.as_deref(),
            Some("attachment; filename=\"x.csv\"")
        );
        assert_eq!(output.cache_control.as_deref(), Some("no-cache"));
        assert!(output.content_encoding.is_none() && output.expires.is_none());
    }
}
