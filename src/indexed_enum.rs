//! One variant list for the enums whose values index counter arrays.

/// Declares a fieldless enum together with `ALL` (every variant, in declaration order),
/// `COUNT` and `index` (a variant's position in `ALL`), all generated from its one variant
/// list. Counters are `[_; COUNT]` arrays indexed by `index()`, so a new variant is counted
/// like the others: hand-kept tables would compile without it and then index out of bounds,
/// and where the discriminants are wire codes `as usize` is no position at all.
macro_rules! indexed_enum {
    (
        $(#[$attr:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_attr:meta])* $variant:ident $(= $value:expr)?),+ $(,)?
        }
    ) => {
        $(#[$attr])*
        $vis enum $name {
            $($(#[$variant_attr])* $variant $(= $value)?,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; $name::COUNT] = [$($name::$variant,)+];

            pub const COUNT: usize = [$(stringify!($variant),)+].len();

            /// Position in [`ALL`](Self::ALL), for per-variant counters.
            pub const fn index(self) -> usize {
                // Default discriminants number the variants in declaration order, whatever
                // discriminants the real enum carries.
                enum Position {
                    $($variant,)+
                }
                match self {
                    $($name::$variant => Position::$variant as usize,)+
                }
            }
        }
    };
}

pub(crate) use indexed_enum;

#[cfg(test)]
mod tests {
    indexed_enum! {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u16)]
        enum Sparse {
            First = 900,
            Second = 7,
            /// Attributes pass through.
            Third = 9401,
        }
    }

    #[test]
    fn positions_follow_declaration_order_not_discriminants() {
        assert_eq!(Sparse::COUNT, 3);
        assert_eq!(Sparse::ALL, [Sparse::First, Sparse::Second, Sparse::Third]);
        for (at, variant) in Sparse::ALL.into_iter().enumerate() {
            assert_eq!(variant.index(), at);
        }
        assert_eq!(Sparse::Third as u16, 9401);
    }
}
