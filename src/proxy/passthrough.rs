//! Pass-through: the request streams to the origin and the response streams back. No buffering,
//! no disk, nothing recorded.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use crate::error::{BoxError, ProxyBody};
use crate::origin::{Origin, OriginError};

/// What is forwarded: the method, the target in origin form and the cleaned headers.
#[derive(Debug)]
pub struct Head {
    /// Request method, unchanged.
    pub method: Method,
    /// `path?query` as the client sent it.
    pub target: String,
    /// Headers after hygiene (see `proxy::headers`).
    pub headers: HeaderMap,
}

/// Streams the request to the origin and returns its response, streaming, with hop-by-hop
/// headers removed. The body is the client's ([`crate::body::GuardedBody`]), or an empty one
/// standing in for a client body already known to be empty.
pub async fn forward<B>(
    origin: &Origin,
    head: Head,
    body: B,
) -> Result<Response<ProxyBody>, OriginError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut req = Request::new(body.map_err(Into::into).boxed_unsync());
    *req.method_mut() = head.method;
    *req.uri_mut() = origin.uri_for(&head.target)?;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = head.headers;
    let resp = origin.send(req).await?;
    Ok(to_client(resp))
}

/// An origin response ready for the client: hop-by-hop headers removed, body streamed as is.
pub fn to_client(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    super::headers::strip_hop_by_hop(&mut parts.headers);
    // Only copyist sets X-Copyist-* on its answers; an origin cannot impersonate it.
    super::headers::strip_copyist(&mut parts.headers);
    Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
}
