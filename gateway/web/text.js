// Small text helpers shared by the panels.

/** "1 face", "2 faces". */
export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
