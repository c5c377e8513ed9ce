//! The HTTP routes: `/metrics` (content negotiated), `/`, and errors.

use super::exposition::Format;
use super::page::Page;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};

pub(super) fn respond<B>(request: &Request<B>, page: &Page) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let method = request.method();
    if path != "/metrics" && path != "/" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/" {
        return plain(
            StatusCode::OK,
            "synproxy-agent: Prometheus metrics at /metrics\n",
        );
    }
    let format = Format::for_accept(
        request
            .headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    match page.body(format) {
        Some(body) => {
            let mut response = Response::new(Full::new(body));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            response
        }
        None => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        ),
    }
}

pub(super) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// 401 for a request without valid `basic_auth_users` credentials.
pub(super) fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"synproxy-agent\""),
    );
    response
}
