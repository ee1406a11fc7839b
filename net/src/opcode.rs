//! Opcodes and statuses of the native protocol.

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            /// The variant with this wire value, if this build knows it.
            pub fn from_u8(value: u8) -> Option<$name> {
                match value {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// Every variant, in wire-value order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
        }
    };
}

wire_enum! {
    /// What a frame asks for. Client opcodes are below 0x40; internode
    /// opcodes (0x40 and up) are accepted only on authenticated internode
    /// connections.
    Opcode {
        Ping = 0x01,
        /// key → values (siblings) and context.
        Get = 0x02,
        /// key, optional context, value.
        Put = 0x03,
        /// key, context: writes a tombstone.
        Delete = 0x04,
        /// Server and shard statistics (value: UTF-8 text).
        Stats = 0x05,
        /// The partition → shard map and shard ports, for shard-aware clients.
        ShardMap = 0x06,
        /// An operator's command to the node (key: `status`, `leave` or
        /// `remove`; value: a node id or empty) → UTF-8 text.
        Admin = 0x07,
        /// Authenticated handshake of an internode connection.
        Handshake = 0x40,
        ReplicaGet = 0x41,
        ReplicaPut = 0x42,
        Gossip = 0x43,
        MerkleExchange = 0x44,
        Hint = 0x45,
        PartitionTransfer = 0x46,
    }
}

wire_enum! {
    /// The outcome carried by a response.
    Status {
        Ok = 0,
        NotFound = 1,
        /// The request is malformed for its opcode (message in the value).
        BadRequest = 2,
        KeyTooLarge = 3,
        ValueTooLarge = 4,
        ContextTooLarge = 5,
        /// The coordinator's timeout passed before the quorum answered.
        Timeout = 6,
        /// Too few replicas are reachable to meet the quorum.
        Unavailable = 7,
        /// The server is shedding load; retry later.
        Overloaded = 8,
        UnknownOpcode = 9,
        Unauthorized = 10,
        ShuttingDown = 11,
        TooManySiblings = 12,
        /// A server-side failure (message in the value).
        Internal = 13,
        /// Internode: the receiving node is not a primary of the key's
        /// partition (its view differs); the sender tries another.
        NotPrimary = 14,
    }
}

impl Opcode {
    pub fn is_internode(self) -> bool {
        (self as u8) >= 0x40
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip_and_unknown_values_are_none() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_u8(*op as u8), Some(*op));
        }
        for status in Status::ALL {
            assert_eq!(Status::from_u8(*status as u8), Some(*status));
        }
        assert_eq!(Opcode::from_u8(0), None);
        assert_eq!(Opcode::from_u8(0xff), None);
        assert_eq!(Status::from_u8(200), None);
        assert!(Opcode::Hint.is_internode() && !Opcode::Get.is_internode());
    }
}
