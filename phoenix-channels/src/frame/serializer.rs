//! The serializers: how a socket's frames are written and read, chosen per socket by the
//! `vsn` it connects with (Phoenix picks the server's serializer by it).

/// The wire format of a socket, chosen with
/// [`SocketBuilder::serializer`](crate::SocketBuilder::serializer); its [`vsn`](Self::vsn) is
/// sent in the connect URL.
///
/// - [`Json`](Self::Json): Phoenix's V2 serializer (`vsn=2.0.0`), the default. Messages are
///   JSON text frames `[join_ref, ref, topic, event, payload]`; binary payloads travel in
///   binary frames with a small header.
/// - [`MessagePack`](Self::MessagePack) (`vsn=3.0.0`): the same array as a MessagePack binary
///   frame (replies `[join_ref, ref, topic, "phx_reply", {status, response}]`), as Dust's
///   `DustWeb.MsgpackSerializer` speaks it. Binary payloads keep the binary header frames
///   (a binary frame whose first byte is 0, 1 or 2 is one); text frames from the server are
///   still read as JSON.
///
/// A payload of either format can be sent on a socket of either serializer: it is transcoded
/// when the frame is written.
///
/// Under `3.0.0` the server reads a client's binary frame in the layout of its own pushes,
/// which has no ref: a binary payload can be *cast* (`Channel::cast_payload`, ...), but a
/// binary push awaiting a reply fails at once with
/// [`EncodeError::BinaryReplyUnsupported`](super::EncodeError::BinaryReplyUnsupported). Send a
/// MessagePack payload (`bin` values inside it) when a reply is needed.
///
/// ```
/// use phoenix_channels::Serializer;
///
/// assert_eq!(Serializer::default(), Serializer::Json);
/// assert_eq!(Serializer::Json.vsn(), "2.0.0");
/// assert_eq!(Serializer::MessagePack.vsn(), "3.0.0");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Serializer {
    /// Phoenix's V2 JSON serializer (`vsn=2.0.0`).
    #[default]
    Json,
    /// MessagePack (`vsn=3.0.0`), as Dust's server speaks it.
    MessagePack,
}

impl Serializer {
    /// The `vsn` the socket connects with: `2.0.0` or `3.0.0`.
    pub fn vsn(&self) -> &'static str {
        match self {
            Self::Json => "2.0.0",
            Self::MessagePack => "3.0.0",
        }
    }
}
