//! The only place where opaque C handles are cast to and from Rust values.
//!
//! Each handle type implements [`Castable`], whose `Ownership` records how the handle owns its
//! value: `sdrs_pipeline` is an `Arc<Pipeline>` (immutable, shared between threads),
//! `sdrs_images` is a `Box<Images>` (one owner). The functions below are the only conversions.

use std::sync::Arc;

/// The handle is an `Arc<RustType>` turned into a raw pointer.
pub(crate) struct OwnershipArc;
/// The handle is a `Box<RustType>` turned into a raw pointer.
pub(crate) struct OwnershipBox;

/// Ties an opaque C type to the Rust value behind it and to how it is owned.
pub(crate) trait Castable {
    /// [`OwnershipArc`] or [`OwnershipBox`].
    type Ownership;
    /// The Rust value the handle points to.
    type RustType;
}

/// Gives `value` to C as an `Arc`-owned handle; free it with [`free_arc`].
pub(crate) fn to_arc_ptr<C: Castable<Ownership = OwnershipArc>>(value: C::RustType) -> *mut C {
    Arc::into_raw(Arc::new(value)).cast_mut().cast()
}

/// Gives `value` to C as a `Box`-owned handle; free it with [`free_box`].
pub(crate) fn to_box_ptr<C: Castable<Ownership = OwnershipBox>>(value: C::RustType) -> *mut C {
    Box::into_raw(Box::new(value)).cast()
}

/// Borrows the value behind a handle; `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or a live handle of type `C` made by [`to_arc_ptr`] / [`to_box_ptr`], not freed
/// during `'a`.
pub(crate) unsafe fn try_ref<'a, C: Castable>(ptr: *const C) -> Option<&'a C::RustType> {
    // SAFETY: a non-NULL handle points to a live `C::RustType` (the caller's contract); both
    // constructors above produce pointers to exactly that type, and nothing mutates it while
    // handles are shared (no `&mut` is ever made from a handle).
    unsafe { ptr.cast::<C::RustType>().as_ref() }
}

/// Drops one reference of an `Arc` handle; NULL is ignored.
///
/// # Safety
/// `ptr` is NULL or a handle from [`to_arc_ptr`] that has not been freed yet.
pub(crate) unsafe fn free_arc<C: Castable<Ownership = OwnershipArc>>(ptr: *mut C) {
    if !ptr.is_null() {
        // SAFETY: the pointer came from `Arc::into_raw` of an `Arc<C::RustType>` and this
        // reference has not been released yet (the caller's contract).
        drop(unsafe { Arc::from_raw(ptr.cast_const().cast::<C::RustType>()) });
    }
}

/// Drops a `Box` handle; NULL is ignored.
///
/// # Safety
/// `ptr` is NULL or a handle from [`to_box_ptr`] that has not been freed yet.
pub(crate) unsafe fn free_box<C: Castable<Ownership = OwnershipBox>>(ptr: *mut C) {
    if !ptr.is_null() {
        // SAFETY: the pointer came from `Box::into_raw` of a `Box<C::RustType>` and has not been
        // freed yet (the caller's contract).
        drop(unsafe { Box::from_raw(ptr.cast::<C::RustType>()) });
    }
}
