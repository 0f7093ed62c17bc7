//! Typed ids. The planner treats every id as an opaque, non-empty string ordered as bytes; the store mints UUIDs
//! (v7) and wraps them in these same types, so `warmpool plan` accepts any id a user writes.

/// Declares an opaque string id newtype (serde-transparent, ordered as bytes). Exported so the store declares its
/// own ids (templates, versions, builds) the same way.
#[macro_export]
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, ::serde::Serialize, ::serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                $name(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                $name(id.to_owned())
            }
        }
    };
}

id_type!(
    /// A preset of one template version.
    PresetId
);
id_type!(
    /// A workspace, pooled or claimed.
    WorkspaceId
);
