"""
ESA-style prompts answered from a stream.
"""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.cli._prompt import BadAnswer, PromptAborted, Prompter


def prompter(answers: str) -> tuple[Prompter, io.StringIO]:
    out = io.StringIO()
    return Prompter(io.StringIO(answers), out), out


class PrompterTests(SynchronousTestCase):
    def test_choose(self) -> None:
        """
        A numbered menu shows the current choice in brackets; Enter keeps
        it; a bad answer gets the reason and the prompt again; the answer
        is echoed when the input is not a terminal.
        """
        p, out = prompter("\n9\n2\n")
        self.assertEqual(p.choose("Pick one.", ["No", "Yes"], 1), 1)
        self.assertEqual(p.choose("Pick one.", ["No", "Yes"], 0), 1)
        self.assertEqual(
            out.getvalue(),
            "Pick one.\n1. No\n2. Yes\n[2]>\n"
            "Pick one.\n1. No\n2. Yes\n[1]>9\nPlease enter a number from 1 to 2.\n[1]>2\n",
        )

    def test_yes_no(self) -> None:
        """
        Yes/no questions take y, yes, n, no in any case; Enter keeps the
        default; anything else is asked again.
        """
        p, out = prompter("\nYES\nwhat\nn\n")
        self.assertTrue(p.yes_no("Sure?", True))
        self.assertTrue(p.yes_no("Sure?", False))
        self.assertFalse(p.yes_no("Sure?", True))
        self.assertIn("Sure? [Y]>what\nPlease answer Y or N.\nSure? [Y]>n\n", out.getvalue())

    def test_integer_bounds(self) -> None:
        """
        Numbers outside the bounds, or not numbers, are refused with the
        reason.
        """
        p, out = prompter("0\nten\n12\n")
        self.assertEqual(p.integer("How many?", 5, 1, 100), 12)
        self.assertEqual(
            out.getvalue(),
            "How many?\n[5]>0\nEnter a number from 1 to 100.\n[5]>ten\n"
            "'ten' is not a whole number.\n[5]>12\n",
        )

    def test_ask_check(self) -> None:
        """
        A check's L{BadAnswer} reason is shown before the prompt repeats.
        """

        def even(answer: str) -> int:
            if int(answer) % 2:
                raise BadAnswer("Odd.")
            return int(answer)

        p, out = prompter("3\n4\n")
        self.assertEqual(p.ask("Even number:", even, None), 4)
        self.assertEqual(out.getvalue(), "Even number:\n[]>3\nOdd.\n[]>4\n")

    def test_operation(self) -> None:
        """
        Operations are matched in any case and by unambiguous prefix; Enter
        goes back.
        """
        ops = [("NEW", "Create."), ("NAME", "Rename."), ("EDIT", "Edit.")]
        p, out = prompter("ed\nn\nna\n\n")
        self.assertEqual(p.operation(ops), "EDIT")
        self.assertEqual(p.operation(ops), "NAME")
        self.assertIsNone(p.operation(ops))
        self.assertIn("- NEW - Create.\n", out.getvalue())
        self.assertIn("'N' is ambiguous: NEW, NAME.", out.getvalue())

    def test_choose_many(self) -> None:
        """
        Several numbers separated by commas.
        """
        p, _ = prompter("3, 2,3\n")
        self.assertEqual(p.choose_many("Which?", ["a", "b", "c"], [0]), [1, 2])

    def test_end_of_input(self) -> None:
        """
        End of input at a prompt raises L{PromptAborted}.
        """
        p, _ = prompter("")
        self.assertRaises(PromptAborted, p.yes_no, "Sure?", True)
        self.assertRaises(PromptAborted, p.text, "Name?")

    def test_numbers_int_cannot_read(self) -> None:
        """
        A menu or item number is ASCII digits: C{"²"} (which C{str.isdigit}
        accepts but C{int} refuses) and a number too long for C{int} are
        refused with the reason and the prompt repeats, in a numbered menu,
        a several-choice menu and an item pick alike, instead of ending the
        dialog with a traceback.
        """
        huge = "9" * 5000
        p, out = prompter(f"\u00b2\n{huge}\n2\n\u00b2\n{huge}\n1,3\n\u00b2\n{huge}\nb\n")
        self.assertEqual(p.choose("Pick one.", ["No", "Yes"], 0), 1)
        self.assertEqual(p.choose_many("Which?", ["a", "b", "c"], [0]), [0, 2])
        self.assertEqual(p.pick("Which item?", ["a", "b"]), 1)
        text = out.getvalue()
        self.assertEqual(text.count("Please enter a number from 1 to 2.\n"), 2)
        self.assertEqual(text.count("Please enter numbers from 1 to 3, separated by commas.\n"), 2)
        self.assertEqual(text.count("is not one of the names or numbers listed.\n"), 2)
