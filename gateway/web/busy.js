// Slow actions started from a button: the keyboard focus stays where the person left it.

/**
 * Runs `work()`; if `button` had the focus and lost it (a disabled button drops it),
 * the focus goes back to the button once the work is done and the button is usable.
 */
export async function keepingFocus(button, work) {
  const hadFocus = document.activeElement === button;
  try {
    return await work();
  } finally {
    const lost = !document.activeElement || document.activeElement === document.body;
    if (hadFocus && lost && button.isConnected && !button.disabled) button.focus();
  }
}
